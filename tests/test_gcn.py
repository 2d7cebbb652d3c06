"""Checks the residual GCN against a hand computation, and that an untrained CapNet is prompt-only CLIP."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from capnet.config import GCNConfig, ModelConfig, PromptConfig
from capnet.gcn import ResidualGCN
from capnet.model import CapNet

NAMES = ["cat", "traffic light", "dog", "hair drier", "person", "bus"]

# ----------------------------------------------------------------------------- references


def leaky(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


def ref_gcn(x: np.ndarray, a: np.ndarray, weights: list[np.ndarray], slope: float) -> np.ndarray:
    """x + A (... leaky(A leaky(A x W1) W2) ...) W_L with W_l = the l-th nn.Linear weight transposed."""
    h = x
    for i, w in enumerate(weights):
        h = a @ (h @ w.T)
        if i < len(weights) - 1:
            h = leaky(h, slope)
    return x + h


def random_inputs(c: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, d, generator=g)
    a = torch.rand(c, c, generator=g)
    return x, (a + a.T) / 2


# ----------------------------------------------------------------------------- ResidualGCN


@pytest.mark.parametrize(("layers", "hidden"), [(1, None), (2, 5), (3, None), (3, 7), (4, 3)])
def test_untrained_gcn_is_identity(layers, hidden):
    torch.manual_seed(layers)
    gcn = ResidualGCN(6, hidden=hidden, layers=layers)
    x, a = random_inputs(5, 6, seed=layers)
    assert torch.equal(gcn(x, a), x)
    # the earlier layers are not zero: only the last one is
    if layers > 1:
        assert gcn.layers[0].linear.weight.abs().sum() > 0


def test_three_layer_gcn_matches_hand_formula():
    torch.manual_seed(0)
    gcn = ResidualGCN(6, hidden=4, layers=3, negative_slope=0.2)
    with torch.no_grad():
        for layer in gcn.layers:
            layer.linear.weight.normal_()
    x, a = random_inputs(5, 6, seed=1)
    w1, w2, w3 = (layer.linear.weight.detach().double().numpy().T for layer in gcn.layers)
    xd, ad = x.double().numpy(), a.double().numpy()
    want = xd + ad @ (leaky(ad @ (leaky(ad @ xd @ w1, 0.2) @ w2), 0.2) @ w3)
    got = gcn(x, a).detach().double().numpy()
    assert np.abs(want - xd).max() > 0.1  # the residual is not trivially zero
    assert (ad @ xd @ w1 < 0).any()  # the leaky branch is exercised
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("layers", "hidden", "slope"), [(1, None, 0.2), (2, 3, 0.1), (4, 6, 0.0)])
def test_gcn_matches_loop_reference(layers, hidden, slope):
    torch.manual_seed(10 + layers)
    gcn = ResidualGCN(6, hidden=hidden, layers=layers, negative_slope=slope)
    with torch.no_grad():
        for layer in gcn.layers:
            layer.linear.weight.normal_(std=0.7)
    x, a = random_inputs(4, 6, seed=layers)
    weights = [layer.linear.weight.detach().double().numpy() for layer in gcn.layers]
    want = ref_gcn(x.double().numpy(), a.double().numpy(), weights, slope)
    np.testing.assert_allclose(gcn(x, a).detach().double().numpy(), want, rtol=1e-5, atol=1e-5)
    assert len(gcn.layers) == layers
    assert all(layer.linear.bias is None for layer in gcn.layers)


def test_gcn_square_weights_are_not_transposed():
    # with hidden == dim a transposed weight would not raise: compare against x @ W^T numerically
    torch.manual_seed(3)
    gcn = ResidualGCN(5, layers=1)
    w = torch.randn(5, 5)
    with torch.no_grad():
        gcn.layers[0].linear.weight.copy_(w)
    x, a = random_inputs(4, 5, seed=3)
    want = x.double().numpy() + a.double().numpy() @ x.double().numpy() @ w.double().numpy().T
    np.testing.assert_allclose(gcn(x, a).detach().double().numpy(), want, rtol=1e-5, atol=1e-5)
    wrong = x.double().numpy() + a.double().numpy() @ x.double().numpy() @ w.double().numpy()
    assert np.abs(want - wrong).max() > 1e-2


def test_zero_last_layer_still_learns():
    # gradient of the zero last layer: dL/dW3 = R^T (A h2) with h2 the second layer's activation
    torch.manual_seed(4)
    gcn = ResidualGCN(6, hidden=4, layers=3)
    x, a = random_inputs(5, 6, seed=4)
    r = torch.randn(5, 6)
    (gcn(x, a) * r).sum().backward()
    w1, w2 = (layer.linear.weight.detach().double().numpy() for layer in gcn.layers[:2])
    xd, ad = x.double().numpy(), a.double().numpy()
    h2 = leaky(ad @ (leaky(ad @ xd @ w1.T, 0.2) @ w2.T), 0.2)
    want = r.double().numpy().T @ (ad @ h2)
    got = gcn.layers[2].linear.weight.grad.double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.abs(got).max() > 0
    # nothing reaches the earlier layers while the last one is zero
    assert torch.count_nonzero(gcn.layers[0].linear.weight.grad) == 0


def test_gcn_casts_adjacency_dtype():
    torch.manual_seed(5)
    gcn = ResidualGCN(6, layers=2)
    with torch.no_grad():
        gcn.layers[-1].linear.weight.normal_()
    x, a = random_inputs(3, 6, seed=5)
    out = gcn(x, a.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, gcn(x, a))


@pytest.mark.parametrize("layers", [0, -1])
def test_gcn_needs_a_layer(layers):
    with pytest.raises(ValueError, match=r"^the GCN needs at least one layer$"):
        ResidualGCN(4, layers=layers)


def test_default_gcn_is_three_bias_free_convolutions():
    """The method's GCN: three graph convolutions (A X W, no bias) with LeakyReLU(0.2) between them."""
    gcn = ResidualGCN(6)
    assert len(gcn.layers) == 3 and gcn.act.negative_slope == 0.2
    assert all(layer.linear.bias is None for layer in gcn.layers)
    assert [tuple(layer.linear.weight.shape) for layer in gcn.layers] == [(6, 6)] * 3


# ----------------------------------------------------------------------------- CapNet before training


def test_untrained_capnet_equals_model_without_gcn(tiny_backbone):
    with_gcn = CapNet(tiny_backbone(seed=0), NAMES)
    without = CapNet(tiny_backbone(seed=0), NAMES, ModelConfig(gcn=GCNConfig(enabled=False)))
    assert with_gcn.gcn is not None and without.gcn is None
    assert with_gcn.adjacency.shape == (len(NAMES), len(NAMES))
    # the GCN actually propagates something once trained: its graph is not empty
    assert with_gcn.graph.stats()["num_edges"] > 0
    with torch.no_grad():
        without.prompts.ctx.copy_(with_gcn.prompts.ctx)
        with_gcn.class_bias.copy_(torch.linspace(-1, 1, len(NAMES)))
        without.class_bias.copy_(with_gcn.class_bias)

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with_gcn.train()
    without.train()
    logits = with_gcn(images)
    assert torch.equal(logits, without(images))
    assert torch.equal(with_gcn.class_features(), without.class_features())
    assert torch.equal(with_gcn.predict_logits(images), without.predict_logits(images))
    # the comparison is not vacuous: logits vary across classes and images
    assert logits.std() > 1e-3

    # once the last GCN layer is non-zero, the two models differ
    with torch.no_grad():
        with_gcn.gcn.layers[-1].linear.weight.normal_()
    assert not torch.allclose(with_gcn(images), without(images), atol=1e-3)


def test_untrained_capnet_is_prompt_only_clip(tiny_backbone):
    """Reference from open_clip alone: encode_image, encode_text("a photo of a {name}."), scale * cos + b."""
    model = CapNet(tiny_backbone(seed=0), NAMES, ModelConfig(prompt=PromptConfig(init="a photo of a")))
    assert model.gcn is not None
    bias = torch.randn(len(NAMES), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.class_bias.copy_(bias)

    clip = tiny_backbone(seed=0).model  # a fresh copy of the same weights, no adapters
    tokenizer = open_clip.get_tokenizer("capnet-tiny")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        image = F.normalize(clip.encode_image(images), dim=-1)
        text = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES])), dim=-1)
        scale = clip.logit_scale.exp().clamp(max=100.0)
        want = scale * image @ text.T + bias

        got = model(images)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.predict_logits(images), want, atol=1e-4, rtol=0)
    assert want.std() > 1e-2  # the reference is not flat

    # a different template gives different logits: the check is sensitive to the prompt
    with torch.no_grad():
        other = F.normalize(clip.encode_text(tokenizer([f"itap of a {n}." for n in NAMES])), dim=-1)
        other_logits = scale * image @ other.T + bias
    assert (other_logits - want).abs().max() > 1e-3
