"""Soft prompts reproduce open_clip's own encode_text when their contexts hold the template words."""

from __future__ import annotations

import open_clip
import pytest
import torch

import capnet.prompts as prompts_module
from capnet.prompts import ClassPrompts
from tests.common import ODD_NAMES, VOC_CLASSES


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    return model.requires_grad_(False), open_clip.get_tokenizer("ViT-B-16")


def _reference(clip, tokenizer, names, phrase="a photo of a"):
    with torch.no_grad():
        return clip.encode_text(tokenizer([f"{phrase} {n}." for n in names]))


@pytest.mark.parametrize("names", [ODD_NAMES, VOC_CLASSES])
def test_template_context_equals_encode_text_on_vit_b16(vit_b16, names):
    clip, tokenizer = vit_b16
    prompts = ClassPrompts(clip, tokenizer, names, init="a photo of a")
    assert prompts.n_ctx == 4
    with torch.no_grad():
        ours = prompts()
    assert (ours - _reference(clip, tokenizer, names)).abs().max() < 1e-5


def test_random_context_set_to_template_words_equals_encode_text(tiny_backbone):
    b = tiny_backbone()
    phrase = "a blurry photo of the"
    prompts = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=5)
    words = b.model.token_embedding(b.tokenizer([phrase]))[0, 1:6]
    with torch.no_grad():
        prompts.ctx.copy_(words.expand(len(ODD_NAMES), -1, -1))
        ours = prompts()
    assert (ours - _reference(b.model, b.tokenizer, ODD_NAMES, phrase)).abs().max() < 1e-5


def _full_length_features(clip, embedded, eot):
    """open_clip's own pass over all 77 positions, padded like encode_text, for comparison."""
    pad = clip.token_embedding.weight[0].expand(embedded.shape[0], 77 - embedded.shape[1], -1)
    x = torch.cat([embedded, pad], dim=1) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    return x[torch.arange(x.shape[0]), eot] @ clip.text_projection


def test_cut_pruned_pass_has_the_gradients_of_the_full_pass(tiny_backbone):
    """capnet's pass (cut to the longest prompt, attention in whole-batch products, the last block at
    end-of-text only): the values and gradients of open_clip's full-length pass, for names of many
    token lengths."""
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ODD_NAMES + VOC_CLASSES, n_ctx=6)
    assert len(set(prompts.eot.tolist())) >= 3
    weights = torch.randn(len(ODD_NAMES + VOC_CLASSES), b.model.text_projection.shape[1])
    module_calls = []
    hook = b.model.transformer.register_forward_hook(lambda *_: module_calls.append(1))
    (prompts() * weights).sum().backward()
    hook.remove()
    assert not module_calls  # the blocks were computed by capnet's own path, not open_clip's forward
    ours = prompts.ctx.grad.clone()
    prompts.ctx.grad = None
    ref = _full_length_features(b.model, prompts.embeddings(), prompts.eot)
    (ref * weights).sum().backward()
    assert (ours - prompts.ctx.grad).abs().max() < 1e-5 * prompts.ctx.grad.abs().max()
    with torch.no_grad():
        assert (prompts() - ref).abs().max() < 1e-5


def test_gradients_reach_only_the_contexts(tiny_backbone):
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=16)
    assert prompts.ctx.shape == (len(ODD_NAMES), 16, b.model.token_embedding.weight.shape[1])
    assert [n for n, _ in prompts.named_parameters()] == ["ctx"]
    b.model.requires_grad_(True)  # even an unfrozen tower must get no gradient through buffers
    prompts().pow(2).sum().backward()
    assert prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0
    assert b.model.token_embedding.weight.grad is None


def test_sequence_is_cut_to_the_longest_prompt(tiny_backbone):
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ["cat", "dog"], n_ctx=4)
    # [SOS] 4 ctx, name, '.', [EOS]
    assert prompts.embeddings().shape[1] == 1 + 4 + 1 + 1 + 1


def test_too_long_class_name_is_named(tiny_backbone):
    b = tiny_backbone()
    long_name = " ".join(["word"] * 80)
    with pytest.raises(ValueError, match="too long.*word word"):
        ClassPrompts(b.model, b.tokenizer, ["cat", long_name], n_ctx=16)


def test_chunks_are_checkpointed_only_when_the_contexts_train(tiny_backbone, monkeypatch):
    """Checkpointing trades compute for memory under autograd; without gradients it is pure waste."""
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=2, class_chunk=2)
    calls = []

    def counting(function, *args, **kwargs):
        calls.append(len(args[0]))
        return function(*args)

    monkeypatch.setattr(prompts_module, "checkpoint", counting)
    with_grad = prompts()
    assert calls == [2, 2, 1]  # five classes, two at a time
    calls.clear()
    with torch.no_grad():
        without = prompts()
    prompts.ctx.requires_grad_(False)
    frozen = prompts()
    assert calls == []
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(frozen, with_grad.detach(), rtol=0, atol=0)


def test_defaults_sixteen_contexts_drawn_with_std_0_02(tiny_backbone):
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, VOC_CLASSES)
    assert prompts.n_ctx == 16 and prompts.ctx.shape[:2] == (20, 16)
    assert float(prompts.ctx.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_one_context_token_and_chunks_of_one_class_are_allowed(tiny_backbone):
    b = tiny_backbone()
    assert ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=1).ctx.shape[1] == 1
    torch.manual_seed(0)
    whole = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=2)
    torch.manual_seed(0)
    single = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=2, class_chunk=1)
    with torch.no_grad():
        torch.testing.assert_close(single(), whole(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"^a prompt needs at least one context token$"):
        ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=0)


def test_the_name_follows_the_contexts_directly(tiny_backbone):
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ["person"], n_ctx=3)
    name_tokens = b.tokenizer(["person."])[0]
    k = int((name_tokens != 0).sum()) - 1  # "person." and the end token, without the start token
    with torch.no_grad():
        want = b.model.token_embedding(name_tokens[1 : 1 + k])
    torch.testing.assert_close(prompts.suffix[0, :k], want, rtol=0, atol=0)


def test_only_the_contexts_are_saved(tiny_backbone):
    """prefix, suffix and end-of-text positions are rebuilt from the names: a checkpoint holds ctx only."""
    b = tiny_backbone()
    prompts = ClassPrompts(b.model, b.tokenizer, ODD_NAMES, n_ctx=2)
    assert set(prompts.state_dict()) == {"ctx"}
    assert {name for name, _ in prompts.named_buffers()} == {"prefix", "suffix", "eot"}


def test_a_prompt_that_just_fits_is_accepted_and_one_token_more_is_refused(tiny_backbone):
    b = tiny_backbone()
    length = b.tokenizer(["x"]).shape[1]
    eot_index = {
        k: int((b.tokenizer([f"X {' '.join(['cat'] * k)}."])[0] != 0).sum()) - 1 for k in range(1, length)
    }
    fits = max(k for k, i in eot_index.items() if i <= length - 2)  # the end token lands before the last slot
    ClassPrompts(b.model, b.tokenizer, [" ".join(["cat"] * fits)], n_ctx=1)
    with pytest.raises(ValueError, match="too long"):
        ClassPrompts(b.model, b.tokenizer, [" ".join(["cat"] * (fits + 1))], n_ctx=1)
