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
    blocks = getattr(clip.transformer, "resblocks", None)
    if getattr(clip.transformer, "batch_first", False) and blocks and all(map(_plain_block, blocks)):
        *first, last = blocks
        for block in first:
            x = _block(block, x, mask)
        x = _block(last, x, mask, at=eot)
    else:
        x = clip.transformer(x, attn_mask=mask)[torch.arange(x.shape[0], device=x.device), eot]
    x = clip.ln_final(x)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _plain_block(block: nn.Module) -> bool:
    """A pre-norm self-attention block whose attention ``_block`` can compute itself."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(block, ResidualAttentionBlock)
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn.dropout == 0.0
        and not hasattr(block, "ln_1_kv")
    )


def _block(
    block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, at: torch.Tensor | None = None
) -> torch.Tensor:
    """The block's own forward, computed in fewer, larger matrix products; with ``at``, only there.

    ``nn.MultiheadAttention`` projects a batch-first input as one small product per position; one
    product over all N x L rows does the same arithmetic faster on a CPU. Only end-of-text is pooled,
    so the last block needs keys and values everywhere but the query, attention output and MLP at
    ``at`` alone (N, width): the same numbers for about a twelfth less of the tower's work.
    """
    attn = block.attn
    n, length, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    if at is None:
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(width, dim=-1)
        residual = x
    else:
        rows = torch.arange(n, device=x.device)
        residual = x[rows, at].unsqueeze(1)
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(h[rows, at].unsqueeze(1), w[:width], None if b is None else b[:width])
        k, v = F.linear(h, w[width:], None if b is None else b[width:]).split(width, dim=-1)
        if mask is not None:
            mask = mask[at][:, None, None]  # each end-of-text position's causal row, for every head
    q, k, v = (t.reshape(n, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
    out = out.transpose(1, 2).reshape(n, -1, width)
    x = residual + block.ls_1(attn.out_proj(out))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x if at is None else x[:, 0]


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
