"""Class-specific soft prompts: ``[SOS] ctx_1 .. ctx_M <class name> . [EOS]`` through the frozen text tower.

Only the context vectors are parameters; the start token, the name, the full stop and end-of-text stay
fixed buffers, so the prompt learner works for any class name of any token length (open vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from capnet.text import check_text_tower, encode_embedded, eot_positions

_PLACEHOLDER = "X"


def phrase_length(tokenizer: Callable, phrase: str) -> int:
    """Number of BPE tokens of ``phrase`` (without start and end tokens)."""
    return int(eot_positions(tokenizer([phrase]))[0]) - 1


class ClassPrompts(nn.Module):
    """One learnable context of M token embeddings per class."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable,
        class_names: Sequence[str],
        n_ctx: int = 16,
        init: str | None = None,
        init_std: float = 0.02,
        *,
        class_chunk: int | None = None,
    ) -> None:
        super().__init__()
        check_text_tower(clip)
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be at least 1, not {class_chunk}")
        self.class_chunk = class_chunk
        self.clip = [clip]  # a list keeps the frozen tower out of this module's parameters and state
        embedding = clip.token_embedding
        device = embedding.weight.device
        if init:
            n_ctx = phrase_length(tokenizer, init)
        if n_ctx < 1:
            raise ValueError("a prompt needs at least one context token")

        prompts = [" ".join([_PLACEHOLDER] * n_ctx) + f" {name}." for name in class_names]
        tokens = tokenizer(prompts).to(device)
        too_long = [n for n, row in zip(class_names, tokens) if row[-1] != 0]
        if too_long:
            raise ValueError(
                f"class name(s) too long for the {tokens.shape[1]}-token context with {n_ctx} context "
                f"tokens: {too_long}"
            )
        eot = eot_positions(tokens)
        length = int(eot.max()) + 1
        with torch.no_grad():
            embedded = embedding(tokens[:, :length])
            if init:
                start = embedding(tokenizer([init]).to(device))[0, 1 : 1 + n_ctx]
                ctx = start.unsqueeze(0).repeat(len(class_names), 1, 1)
            else:
                ctx = (
                    torch.randn(len(class_names), n_ctx, embedding.weight.shape[1], device=device) * init_std
                )
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.float())
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.ctx.shape[0]

    def embeddings(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The prompt embeddings (C, L, width), L = longest prompt; only the rows of ``classes`` if given."""
        ctx, prefix, suffix = self.ctx, self.prefix, self.suffix
        if classes is not None:
            ctx, prefix, suffix = ctx[classes], prefix[classes], suffix[classes]
        return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)

    def forward(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised class text features (C, embed), or (K, embed) for the K indices in ``classes``.

        A subset costs K / C of the full pass (less when its names are short: the pass is cut to them).
        With ``class_chunk``, the classes go through the tower that many at a time; under autograd each
        chunk is checkpointed: its activations are recomputed in the backward pass instead of kept.
        """
        count = self.num_classes if classes is None else len(classes)
        if not self.class_chunk or count <= self.class_chunk:
            eot = self.eot if classes is None else self.eot[classes]
            return encode_embedded(self.clip[0], self.embeddings(classes), eot)
        rows = torch.arange(self.num_classes, device=self.eot.device) if classes is None else classes
        checkpointed = torch.is_grad_enabled() and self.ctx.requires_grad
        parts = []
        for start in range(0, count, self.class_chunk):
            chunk = rows[start : start + self.class_chunk]
            if checkpointed:
                parts.append(checkpoint(self._encode_rows, chunk, use_reentrant=False))
            else:
                parts.append(self._encode_rows(chunk))
        return torch.cat(parts)

    def _encode_rows(self, classes: torch.Tensor) -> torch.Tensor:
        return encode_embedded(self.clip[0], self.embeddings(classes), self.eot[classes])
