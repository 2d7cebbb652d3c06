"""capnet.text against open_clip's own ``encode_text``: the cut-short fast path, the generic fallback for
blocks it cannot compute itself, each kind of text projection, reduced precision, and the tower check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from capnet.text import check_text_tower, encode_embedded, encode_tokens, eot_positions, resolve_templates

PROMPTS = ["a cat.", "a photo of a traffic light at night.", "dog", "an unusually long prompt " * 4, "x y"]


def _tower(tiny_backbone) -> nn.Module:
    """The tiny text tower with random attention biases: freshly built ones are zero, hiding a lost bias."""
    clip = tiny_backbone().model.eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in clip.transformer.resblocks:
            bias = block.attn.in_proj_bias
            bias.copy_(torch.randn(bias.shape, generator=gen) * 0.5)
    return clip


def _tokens(backbone) -> torch.Tensor:
    return backbone.tokenizer(PROMPTS)


def _generic_calls(clip: nn.Module) -> list[int]:
    """Counts calls of the tower's own forward (the path taken for blocks the fast path cannot compute)."""
    calls = [0]
    clip.transformer.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_eot_positions_are_where_the_end_of_text_token_is(tiny_backbone):
    backbone = tiny_backbone()
    tokens = _tokens(backbone)
    eot_id = backbone.tokenizer.eot_token_id
    want = [row.tolist().index(eot_id) for row in tokens]
    assert eot_positions(tokens).tolist() == want
    assert len(set(want)) == len(want)  # the prompts really end in different places


@pytest.mark.parametrize("batch_size", [256, 2])
def test_encode_tokens_matches_open_clip(tiny_backbone, batch_size):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    calls = _generic_calls(clip)
    with torch.no_grad():
        got = encode_tokens(clip, tokens, batch_size=batch_size)
        assert calls[0] == 0  # open_clip's plain blocks run on the fast path
        want = clip.encode_text(tokens)
    assert got.shape == want.shape == (len(PROMPTS), clip.text_projection.shape[1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_encode_embedded_pools_at_the_given_positions(tiny_backbone):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    at = eot_positions(tokens).flip(0)  # each row pooled where another prompt ends
    with torch.no_grad():
        got = encode_embedded(clip, clip.token_embedding(tokens), at)
        x = clip.transformer(
            clip.token_embedding(tokens) + clip.positional_embedding, attn_mask=clip.attn_mask
        )
        pooled = clip.ln_final(x[torch.arange(len(PROMPTS)), at]) @ clip.text_projection
        at_eot = clip.encode_text(tokens)
    torch.testing.assert_close(got, pooled, atol=1e-5, rtol=0)
    assert not torch.allclose(got, at_eot, atol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "none"])
def test_every_kind_of_text_projection(tiny_backbone, kind):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    if kind == "linear":
        proj = clip.text_projection.detach()
        linear = nn.Linear(proj.shape[0], proj.shape[1], bias=True)
        with torch.no_grad():
            linear.weight.copy_(proj.T)
            linear.bias.normal_()
        del clip.text_projection  # a parameter slot takes no module
        clip.text_projection = linear
    else:
        clip.text_projection = None
    with torch.no_grad():
        got, want = encode_tokens(clip, tokens), clip.encode_text(tokens)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_without_a_causal_mask_the_tower_sees_the_cut_sequence(tiny_backbone):
    # Bidirectional attention would see the padding that the cut removes, so the reference is open_clip's
    # tower run on the same cut sequence (causal towers do not need this: see the test above).
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    clip.attn_mask = None
    length = int(eot_positions(tokens).max()) + 1
    with torch.no_grad():
        got = encode_tokens(clip, tokens)
        x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
        x = clip.ln_final(clip.transformer(x, attn_mask=None))
        want = x[torch.arange(len(PROMPTS)), eot_positions(tokens)] @ clip.text_projection
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _replace_attention(block, **kwargs) -> None:
    """The block's attention rebuilt with other options, keeping its projection weights."""
    old = block.attn
    new = nn.MultiheadAttention(old.embed_dim, old.num_heads, batch_first=old.batch_first, **kwargs)
    with torch.no_grad():
        new.in_proj_weight.copy_(old.in_proj_weight)
        new.out_proj.weight.copy_(old.out_proj.weight)
        if new.in_proj_bias is not None:  # (without biases, the block computes another function)
            new.in_proj_bias.copy_(old.in_proj_bias)
            new.out_proj.bias.copy_(old.out_proj.bias)
        if new.bias_k is not None:
            new.bias_k.normal_()
            new.bias_v.normal_()
    block.attn = new


@pytest.mark.parametrize(
    "change",
    ["bias_kv", "zero_attn", "dropout", "sequence_first", "cross_attention", "other_block"],
)
def test_blocks_the_fast_path_cannot_compute_take_the_generic_path(tiny_backbone, change):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    last = clip.transformer.resblocks[-1]
    if change == "bias_kv":
        _replace_attention(last, add_bias_kv=True)
    elif change == "zero_attn":
        _replace_attention(last, add_zero_attn=True)
    elif change == "dropout":
        _replace_attention(last, dropout=0.5)
    elif change == "sequence_first":
        # A sequence-first tower: the transformer transposes, its blocks expect (L, N, D).
        clip.transformer.batch_first = False
        for block in clip.transformer.resblocks:
            block.attn.batch_first = False
    elif change == "cross_attention":
        last.ln_1_kv = nn.LayerNorm(last.ln_1.normalized_shape)
    else:
        clip.transformer.resblocks[-1] = _Wrapped(last)
    clip.eval()
    calls = _generic_calls(clip)
    with torch.no_grad():
        got = encode_tokens(clip, tokens)
        assert calls[0] == 1
        want = clip.encode_text(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if change == "dropout":
        # In training the dropout is real: two passes differ, as they do through open_clip.
        clip.train()
        with torch.no_grad():
            assert not torch.allclose(encode_tokens(clip, tokens), encode_tokens(clip, tokens), atol=1e-4)


class _Wrapped(nn.Module):
    """A block of another type that computes the same thing (e.g. a user's own subclass or a wrapper)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.attn = inner.attn

    def forward(self, x, attn_mask=None):
        return self.inner(x, attn_mask=attn_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_towers_compute_in_their_own_dtype(tiny_backbone, dtype):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    with torch.no_grad():
        full = clip.encode_text(tokens)
        clip.to(dtype)
        got = encode_tokens(clip, tokens)
        want = clip.encode_text(tokens)
    assert got.dtype == want.dtype == dtype
    tol = 2e-2 * full.abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=0)
    torch.testing.assert_close(got.float(), full, atol=4 * tol, rtol=0)


def test_towers_that_are_not_clip_style_are_refused(tiny_backbone):
    clip = tiny_backbone().model
    check_text_tower(clip)  # a CLIP tower passes
    clip.text_pool_type = "first"
    with pytest.raises(NotImplementedError, match="^CLIP: capnet needs a CLIP-style text tower"):
        check_text_tower(clip)

    class NoTokens(nn.Module):
        text_pool_type = "argmax"

    with pytest.raises(NotImplementedError, match="^NoTokens: capnet needs a CLIP-style text tower"):
        check_text_tower(NoTokens())

    class NoPoolType(nn.Module):
        token_embedding = None

    with pytest.raises(NotImplementedError, match="^NoPoolType: capnet needs a CLIP-style text tower"):
        check_text_tower(NoPoolType())


def test_attention_without_biases_stays_on_the_fast_path(tiny_backbone):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    for block in clip.transformer.resblocks:
        _replace_attention(block, bias=False)
    clip.eval()
    calls = _generic_calls(clip)
    with torch.no_grad():
        got = encode_tokens(clip, tokens)
        assert calls[0] == 0
        want = clip.encode_text(tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_reduced_precision_transformer_under_full_precision_embeddings(tiny_backbone):
    # Only the blocks (and what follows them) in bfloat16: the embeddings are cast to the blocks' dtype.
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    with torch.no_grad():
        full = clip.encode_text(tokens)
        for part in (clip.transformer, clip.ln_final):
            part.to(torch.bfloat16)
        clip.text_projection.data = clip.text_projection.data.to(torch.bfloat16)
        assert clip.token_embedding.weight.dtype == clip.positional_embedding.dtype == torch.float32
        got = encode_tokens(clip, tokens)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), full, atol=0.1 * full.abs().max().item(), rtol=0)


class _OtherTransformer(nn.Module):
    """A transformer of another kind: no resblocks or batch_first attribute, only a forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_cast_dtype(self) -> torch.dtype:
        return self.inner.get_cast_dtype()

    def forward(self, x, attn_mask=None):
        return self.inner(x, attn_mask=attn_mask)


class _NoAttn(nn.Module):
    """A block without an ``attn`` attribute."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, attn_mask=None):
        return self.inner(x, attn_mask=attn_mask)


@pytest.mark.parametrize("change", ["other_transformer", "block_without_attn"])
def test_unknown_parts_take_the_generic_path(tiny_backbone, change):
    clip = _tower(tiny_backbone)
    tokens = _tokens(tiny_backbone())
    with torch.no_grad():
        want = clip.encode_text(tokens)
    if change == "other_transformer":
        clip.transformer = _OtherTransformer(clip.transformer)
    else:
        clip.transformer.resblocks[-1] = _NoAttn(clip.transformer.resblocks[-1])
    calls = _generic_calls(clip)
    with torch.no_grad():
        got = encode_tokens(clip, tokens)
    assert calls[0] == 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_bad_template_is_named_in_the_message():
    with pytest.raises(ValueError) as info:
        resolve_templates(["a {}", "no slot", "{} and {}"])
    assert (
        str(info.value) == "each template needs exactly one '{}' for the class name: ['no slot', '{} and {}']"
    )
    with pytest.raises(ValueError) as info:
        resolve_templates([])
    assert str(info.value) == "each template needs exactly one '{}' for the class name: none given"
