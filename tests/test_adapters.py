"""Checks the PEFT methods (field notes 1.8): identity at start, training only what they add, LoRA algebra."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from capnet.adapters import apply_peft, parameter_report, resolve_kind
from capnet.config import AdapterConfig
from capnet.model import CapNet

NAMES = ["cat", "dog", "traffic light", "bus"]


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def snapshot(module: nn.Module) -> dict[int, tuple[str, torch.Tensor]]:
    return {id(p): (name, p.detach().clone()) for name, p in module.named_parameters()}


def sgd_step(clip: nn.Module, x: torch.Tensor, lr: float = 0.5) -> list[nn.Parameter]:
    trainable = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=lr)
    target = torch.randn(x.shape[0], 64, generator=torch.Generator().manual_seed(9))
    loss = ((clip.encode_image(x) - target) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return trainable


# ----------------------------------------------------------------------------- AdaptFormer


def test_adaptformer_identity_then_trains_only_adapters(tiny_backbone):
    clip = tiny_backbone().model
    reference = copy.deepcopy(clip)
    before = snapshot(clip)
    x = images(4)  # on two images every ReLU unit of one 3-wide bottleneck can be off, leaving no gradient

    assert (
        apply_peft(clip.visual, AdapterConfig(kind="adaptformer", bottleneck=3, scale=0.1)) == "adaptformer"
    )
    new = [p for p in clip.parameters() if id(p) not in before]
    # one down (64 -> 3, with bias) and one up (3 -> 64, with bias) per block, 2 blocks
    assert sum(p.numel() for p in new) == 2 * (64 * 3 + 3 + 3 * 64 + 64)
    assert all(p.requires_grad for p in new)
    assert {id(p) for p in clip.parameters() if p.requires_grad} == {id(p) for p in new}

    # bit-identical before training (under no_grad both towers take the same attention kernels)
    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), reference.encode_image(x))
    # with autograd on, the adapters' requires_grad sends nn.MultiheadAttention off its fused fast path,
    # which the frozen reference keeps: equal up to kernel rounding only
    torch.testing.assert_close(clip.encode_image(x).detach(), reference.encode_image(x), atol=1e-5, rtol=0)

    sgd_step(clip, x)
    # gradients reach the adapters only; every other parameter has no gradient at all
    for name, p in clip.named_parameters():
        if id(p) in before:
            assert p.grad is None, name
        else:
            assert p.grad is not None, name
    up_grads = [p.grad for p in new if p.shape == (64, 3)]
    assert len(up_grads) == 2 and all(g.abs().sum() > 0 for g in up_grads)

    # the frozen weights did not move, and the output did
    current = {id(p): p for p in clip.parameters()}
    for pid, (name, value) in before.items():
        assert torch.equal(current[pid], value), name
    with torch.no_grad():
        after = clip.encode_image(x)
        assert (after - reference.encode_image(x)).abs().max() > 1e-4
    # the text tower is untouched by the adapters
    tokens = torch.randint(1, 1000, (2, 77))
    with torch.no_grad():
        assert torch.equal(clip.encode_text(tokens), reference.encode_text(tokens))


def test_adaptformer_block_output_formula(tiny_backbone):
    """block mlp(x) becomes mlp(x) + scale * up(relu(down(x))), checked with numpy for random up weights."""
    clip = tiny_backbone().model
    reference = copy.deepcopy(clip)
    apply_peft(clip.visual, AdapterConfig(kind="adaptformer", bottleneck=2, scale=0.25))
    block = clip.visual.transformer.resblocks[0]
    new = [m for m in block.modules() if isinstance(m, nn.Linear) and m.in_features in (2, 64)]
    down = next(m for m in new if m.out_features == 2)
    up = next(m for m in new if m.in_features == 2)
    with torch.no_grad():
        up.weight.normal_()
        up.bias.normal_()
    h = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = block.mlp(h).double().numpy()
        base = reference.visual.transformer.resblocks[0].mlp(h).double().numpy()
    hd = h.double().numpy()
    d = np.maximum(hd @ down.weight.detach().double().numpy().T + down.bias.detach().double().numpy(), 0)
    want = base + 0.25 * (d @ up.weight.detach().double().numpy().T + up.bias.detach().double().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- LoRA


def lora_layers(visual: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in visual.named_modules() if parametrize.is_parametrized(m)}


def test_lora_identity_and_targets(tiny_backbone):
    clip = tiny_backbone().model
    reference = copy.deepcopy(clip)
    cfg = AdapterConfig(kind="lora", lora_rank=3, lora_alpha=6.0)
    assert apply_peft(clip.visual, cfg) == "lora"

    want = {f"transformer.resblocks.{b}.{t}" for b in range(2) for t in cfg.lora_targets}
    layers = lora_layers(clip.visual)
    assert set(layers) == want
    for name, layer in layers.items():
        ref_layer = reference.visual.get_submodule(name)
        assert torch.equal(layer.parametrizations.weight.original, ref_layer.weight)
        assert torch.equal(layer.weight, ref_layer.weight)  # B = 0: effective weight unchanged

    trainable = [(n, p) for n, p in clip.named_parameters() if p.requires_grad]
    # per layer: A (r x in) and B (out x r)
    expected = sum(3 * (m.in_features + m.out_features) for m in layers.values())
    assert sum(p.numel() for _, p in trainable) == expected
    assert all(".parametrizations.weight." in n and "original" not in n for n, _ in trainable)

    x = images()
    with torch.no_grad():
        start = clip.encode_image(x)
        assert torch.equal(start, reference.encode_image(x))

    # one step trains the LoRA factors only: every other parameter gets no gradient and does not move
    sgd_step(clip, x)
    for name, p in clip.named_parameters():
        assert (p.grad is None) == (not p.requires_grad), name
    ref_params = dict(reference.visual.named_parameters())
    frozen = {
        name.replace(".parametrizations.weight.original", ".weight"): p
        for name, p in clip.visual.named_parameters()
        if not p.requires_grad
    }
    assert frozen.keys() == ref_params.keys()
    for name, p in frozen.items():
        assert torch.equal(p, ref_params[name]), name
    with torch.no_grad():
        assert (clip.encode_image(x) - start).abs().max() > 1e-4


def test_lora_effective_weight_is_w_plus_scaled_ba(tiny_backbone):
    clip = tiny_backbone().model
    reference = copy.deepcopy(clip)
    rank, alpha = 3, 6.0
    apply_peft(clip.visual, AdapterConfig(kind="lora", lora_rank=rank, lora_alpha=alpha))
    name = "transformer.resblocks.1.mlp.c_fc"
    layer = clip.visual.get_submodule(name)
    (lora,) = layer.parametrizations.weight
    g = torch.Generator().manual_seed(5)
    a = torch.randn(rank, layer.in_features, generator=g)
    b = torch.randn(layer.out_features, rank, generator=g)
    with torch.no_grad():
        lora.a.copy_(a)
        lora.b.copy_(b)
    w = reference.visual.get_submodule(name).weight.double().numpy()
    want = w + (alpha / rank) * (b.double().numpy() @ a.double().numpy())
    got = layer.weight.detach().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - w).max() > 1e-2
    # the Linear's forward uses it
    h = torch.randn(4, layer.in_features, generator=g)
    with torch.no_grad():
        out = layer(h).double().numpy()
    bias = layer.bias.detach().double().numpy()
    np.testing.assert_allclose(out, h.double().numpy() @ want.T + bias, rtol=1e-5, atol=1e-5)


def test_lora_on_attention_out_proj_changes_output(tiny_backbone):
    clip = tiny_backbone().model
    reference = copy.deepcopy(clip)
    rank, alpha = 2, 4.0
    apply_peft(
        clip.visual,
        AdapterConfig(kind="lora", lora_rank=rank, lora_alpha=alpha, lora_targets=["attn.out_proj"]),
    )
    x = images()
    with torch.no_grad():
        base = reference.encode_image(x)
        assert torch.equal(clip.encode_image(x), base)

    # set B random in every block, and apply the same update by hand to the reference's out_proj
    g = torch.Generator().manual_seed(6)
    for i, block in enumerate(clip.visual.transformer.resblocks):
        (lora,) = block.attn.out_proj.parametrizations.weight
        b = torch.randn(lora.b.shape, generator=g)
        with torch.no_grad():
            lora.b.copy_(b)
            ref_proj = reference.visual.transformer.resblocks[i].attn.out_proj
            ref_proj.weight += (alpha / rank) * (b @ lora.a)

    with torch.no_grad():
        changed = clip.encode_image(x)
        by_hand = reference.encode_image(x)
    assert (changed - base).abs().max() > 1e-3
    torch.testing.assert_close(changed, by_hand, atol=1e-5, rtol=1e-5)
    # the autograd path (no MHA fast path) agrees too
    torch.testing.assert_close(clip.encode_image(x).detach(), by_hand, atol=1e-5, rtol=1e-5)


def test_lora_rejects_non_linear_target(tiny_backbone):
    clip = tiny_backbone().model
    with pytest.raises(ValueError):
        apply_peft(clip.visual, AdapterConfig(kind="lora", lora_targets=["ln_1"]))


def test_failed_lora_leaves_tower_untouched(tiny_backbone):
    # A bad target must raise before any layer changes, or a retry would stack a second LoRA.
    clip = tiny_backbone().model
    with pytest.raises(ValueError):
        apply_peft(clip.visual, AdapterConfig(kind="lora", lora_targets=["mlp.c_fc", "ln_1"]))
    assert lora_layers(clip.visual) == {}


# ----------------------------------------------------------------------------- bias / norm tuning


def expected_bias_norm(visual: nn.Module, *, any_bias: bool = False) -> set[int]:
    """Parameters named bias (or, with any_bias, any name ending in bias) and BatchNorm/LayerNorm params."""
    want = set()
    for module in visual.modules():
        is_norm = isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm))
        for name, p in module.named_parameters(recurse=False):
            is_bias = name.endswith("bias") if any_bias else name == "bias"
            if is_bias or is_norm:
                want.add(id(p))
    return want


def test_bias_norm_on_resnet(tiny_backbone):
    clip = tiny_backbone("capnet-tiny-rn").model
    reference = copy.deepcopy(clip)
    x = images()
    assert apply_peft(clip.visual, AdapterConfig(kind="bias_norm")) == "bias_norm"

    want = expected_bias_norm(clip.visual)
    got = {id(p) for p in clip.parameters() if p.requires_grad}
    assert got == want
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in clip.visual.modules())
    assert n_bn > 0
    assert sum(isinstance(m, nn.Conv2d) and m.weight.requires_grad for m in clip.visual.modules()) == 0
    assert not any(p.requires_grad for p in clip.transformer.parameters())

    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), reference.encode_image(x))


def test_bias_norm_on_vit_unfreezes_every_bias(tiny_backbone):
    # nn.MultiheadAttention's q/k/v bias is named "in_proj_bias": BitFit tunes every bias term.
    clip = tiny_backbone().model
    apply_peft(clip.visual, AdapterConfig(kind="bias_norm"))
    got = {id(p) for p in clip.visual.parameters() if p.requires_grad}
    assert got == expected_bias_norm(clip.visual, any_bias=True)


# ----------------------------------------------------------------------------- kinds, reports, misuse


def test_auto_kind(tiny_backbone):
    vit = tiny_backbone().model
    rn = tiny_backbone("capnet-tiny-rn").model
    auto = AdapterConfig(kind="auto")
    assert resolve_kind(auto, vit.visual) == "adaptformer"
    assert resolve_kind(auto, rn.visual) == "bias_norm"
    assert apply_peft(vit.visual, auto) == "adaptformer" and vit.visual.capnet_peft == "adaptformer"
    assert apply_peft(rn.visual, auto) == "bias_norm" and rn.visual.capnet_peft == "bias_norm"
    # the structure matches: ViT blocks gained a bottleneck, the ResNet gained nothing but trainable flags
    width = AdapterConfig().bottleneck
    assert all(
        any(isinstance(m, nn.Linear) and m.out_features == width for m in block.modules())
        for block in vit.visual.transformer.resblocks
    )
    assert {id(p) for p in rn.parameters() if p.requires_grad} == expected_bias_norm(rn.visual)


def test_explicit_kinds_and_none(tiny_backbone):
    clip = tiny_backbone().model
    assert resolve_kind(AdapterConfig(kind="lora"), clip.visual) == "lora"
    assert apply_peft(clip.visual, AdapterConfig(kind="none")) == "none"
    assert not any(p.requires_grad for p in clip.parameters())
    rn = tiny_backbone("capnet-tiny-rn").model
    with pytest.raises(ValueError):  # no transformer blocks to wrap
        apply_peft(rn.visual, AdapterConfig(kind="adaptformer"))


@pytest.mark.parametrize("kind", ["adaptformer", "lora", "bias_norm"])
def test_peft_twice_raises(tiny_backbone, kind):
    name = "capnet-tiny-rn" if kind == "bias_norm" else "capnet-tiny"
    clip = tiny_backbone(name).model
    apply_peft(clip.visual, AdapterConfig(kind=kind))
    with pytest.raises(ValueError):
        apply_peft(clip.visual, AdapterConfig(kind=kind))


def test_parameter_report_of_capnet(tiny_backbone):
    backbone = tiny_backbone()
    clip_total = sum(p.numel() for p in backbone.model.parameters())
    model = CapNet(backbone, NAMES)
    report = parameter_report(model)

    # group by the first name segment, walking named_parameters here
    rows: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(name.split(".")[0], {"trainable": 0, "total": 0})
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    assert report["components"] == rows
    assert set(rows) == {"clip", "prompts", "gcn", "logit_scale", "class_bias"}

    # and by the architecture: C x 16 x 64 contexts, 3 square 64 GCN layers, 2 bottleneck-2 adapters
    c, adapters = len(NAMES), 2 * (64 * 2 + 2 + 2 * 64 + 64)
    assert rows["prompts"] == {"trainable": c * 16 * 64, "total": c * 16 * 64}
    assert rows["gcn"] == {"trainable": 3 * 64 * 64, "total": 3 * 64 * 64}
    assert rows["clip"] == {"trainable": adapters, "total": clip_total + adapters}
    assert rows["logit_scale"] == {"trainable": 1, "total": 1}
    assert rows["class_bias"] == {"trainable": c, "total": c}
    trainable = c * 16 * 64 + 3 * 64 * 64 + adapters + 1 + c
    total = trainable + clip_total
    assert report["trainable"] == trainable
    assert report["total"] == total
    assert report["fraction"] == pytest.approx(trainable / total)

    # a second model on the same (now adapted) backbone is refused
    with pytest.raises(ValueError):
        CapNet(backbone, NAMES)


def test_parameter_report_of_frozen_and_bias_norm_tower(tiny_backbone):
    clip = tiny_backbone("capnet-tiny-rn").model
    total = sum(p.numel() for p in clip.parameters())
    report = parameter_report(clip)
    assert report["trainable"] == 0 and report["total"] == total and report["fraction"] == 0.0

    apply_peft(clip.visual, AdapterConfig(kind="bias_norm"))
    report = parameter_report(clip)
    want = sum(p.numel() for p in clip.visual.parameters() if id(p) in expected_bias_norm(clip.visual))
    assert report["trainable"] == want > 0
    assert report["components"]["visual"]["trainable"] == want
    assert report["components"]["transformer"]["trainable"] == 0
    # logit_scale is a direct parameter of the CLIP model
    assert report["components"]["logit_scale"] == {"trainable": 0, "total": 1}
    assert report["fraction"] == pytest.approx(want / total)
