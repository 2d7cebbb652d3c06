"""The CLIP text tower driven from token embeddings, so soft prompts and plain text share one path.

The tower is causal and pools at the end-of-text token, so positions after the longest sequence's
end-of-text never matter: every pass is cut to that length, which makes short prompts several times cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

# The seven templates of the CLIP notebook's ImageNet ensemble, plus the plain CoOp template.
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def check_text_tower(clip: nn.Module) -> None:
    """Soft prompts need a causal tower pooled at the end-of-text token (CLIP, OpenCLIP, not SigLIP)."""
    if not hasattr(clip, "token_embedding") or getattr(clip, "text_pool_type", None) != "argmax":
        raise NotImplementedError(
            f"{type(clip).__name__}: capnet needs a CLIP-style text tower (causal, pooled at end-of-text)"
        )


def eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    """End-of-text holds the largest token id in CLIP's vocabulary."""
    return tokens.argmax(dim=-1)


def encode_embedded(clip: nn.Module, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features (unnormalised) of already-embedded token sequences (N, L, width)."""
    length = int(eot.max()) + 1
    cast_dtype = clip.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    if _last_block_prunable(clip.transformer):
        x = _run_to_positions(clip.transformer, x, mask, eot)
    else:
        x = clip.transformer(x, attn_mask=mask)[torch.arange(x.shape[0], device=x.device), eot]
    x = clip.ln_final(x)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _last_block_prunable(transformer: nn.Module) -> bool:
    blocks = getattr(transformer, "resblocks", None)
    return (
        getattr(transformer, "batch_first", False)
        and blocks is not None
        and isinstance(blocks[-1], ResidualAttentionBlock)
        and isinstance(blocks[-1].attn, nn.MultiheadAttention)
        and not hasattr(blocks[-1], "ln_1_kv")
    )


def _run_to_positions(
    transformer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, eot: torch.Tensor
) -> torch.Tensor:
    """The tower's output at each sequence's end-of-text only (N, width).

    Only end-of-text is pooled, so the last block needs keys and values at every position but the query,
    attention output and MLP at that one position: the same numbers for a few per cent less work.
    """
    *blocks, last = transformer.resblocks
    for block in blocks:
        x = block(x, attn_mask=mask)
    rows = torch.arange(x.shape[0], device=x.device)
    kv = last.ln_1(x)
    q = kv[rows, eot].unsqueeze(1)
    # the causal mask's row at end-of-text: a query there sees itself and every position before it
    row_mask = mask[eot].unsqueeze(1).repeat_interleave(last.attn.num_heads, 0) if mask is not None else None
    h = x[rows, eot].unsqueeze(1) + last.ls_1(last.attention(q_x=q, k_x=kv, v_x=kv, attn_mask=row_mask))
    h = h + last.ls_2(last.mlp(last.ln_2(h)))
    return h[:, 0]


def encode_tokens(clip: nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Same features as ``clip.encode_text(tokens)``, cut to the longest prompt."""
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start : start + batch_size]
        out.append(encode_embedded(clip, clip.token_embedding(chunk), eot_positions(chunk)))
    return torch.cat(out)


def template_features(
    clip: nn.Module,
    tokenizer: Callable,
    class_names: Sequence[str],
    templates: Sequence[str] = ENSEMBLE_TEMPLATES,
) -> torch.Tensor:
    """Template ensembling: encode each template, normalise, average, normalise again (C, embed)."""
    device = clip.token_embedding.weight.device
    prompts = [t.format(name) for name in class_names for t in templates]
    with torch.no_grad():
        feats = F.normalize(encode_tokens(clip, tokenizer(prompts).to(device)).float(), dim=-1)
    feats = feats.view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    if templates == "ensemble":
        return ENSEMBLE_TEMPLATES
    if isinstance(templates, str):
        templates = [templates]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name: {bad or 'none given'}")
    return tuple(templates)
