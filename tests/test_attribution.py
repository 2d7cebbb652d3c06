"""Label-graph attribution against direct computations with the model's own GCN and the graph's normalise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capnet.config import GCNConfig, GraphConfig, ModelConfig
from capnet.explain import graph_attribution, unavailable_reason
from capnet.graph import normalise
from capnet.model import CapNet

NAMES = ["cat", "dog", "horse", "sheep", "car", "boat"]
# Co-occurrence by design: cat-dog, dog-horse (P(horse | dog) = 0.4), sheep-car; boat never co-occurs.
TRAIN_LABELS = np.array(
    [[1, 1, 0, 0, 0, 0]] * 3 + [[0, 1, 1, 0, 0, 0]] * 2 + [[0, 0, 0, 1, 1, 0]] * 2 + [[0, 0, 0, 0, 0, 1]] * 2
)
GRAPH = GraphConfig(source="cooccurrence", sparsify="threshold", threshold=0.4)


def _capnet(backbone, *, trained: bool = True) -> CapNet:
    model = CapNet(backbone, NAMES, ModelConfig(graph=GRAPH), train_labels=TRAIN_LABELS).eval()
    if trained:  # a GCN whose residual is far from zero, and biases that are not
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for layer in model.gcn.layers:
                layer.linear.weight.copy_(torch.randn(layer.linear.weight.shape, generator=generator) * 0.3)
            model.class_bias.copy_(torch.randn(len(NAMES), generator=generator))
    return model


def _image_feature(model: CapNet) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    return x, model.encode_image(x)[0]


@torch.no_grad()
def _logit(model: CapNet, image: torch.Tensor, feats: torch.Tensor, c: int) -> float:
    return float(model.scale * F.cosine_similarity(image, feats[c], dim=0) + model.class_bias[c])


@pytest.mark.parametrize("arch", ["capnet-tiny", "capnet-tiny-rn"])
def test_each_edge_change_equals_a_direct_recomputation(tiny_backbone, arch):
    model = _capnet(tiny_backbone(arch))
    assert model.graph.neighbours(1) == [0, 2] and model.graph.neighbours(5) == []
    x, image = _image_feature(model)
    result = graph_attribution(model, image, "dog")
    with torch.no_grad():
        prompts = model.prompts().float()
        full = _logit(model, image, model.gcn(prompts, model.adjacency), 1)
        assert result.logit == pytest.approx(float(model.predict_logits(x)[0, 1]), abs=1e-4)
        assert result.logit == pytest.approx(full, abs=1e-5)
        assert result.logit_without_gcn == pytest.approx(_logit(model, image, prompts, 1), abs=1e-5)
        expected = {}
        for j in (0, 2):
            w = model.graph.weights.clone()
            w[1, j] = w[j, 1] = 0.0
            dropped = model.gcn(prompts, normalise(w, GRAPH.p))
            expected[NAMES[j]] = full - _logit(model, image, dropped, 1)
    assert {e.neighbour: e.change for e in result.edges} == pytest.approx(expected, abs=1e-5)
    assert all(abs(v) > 1e-3 for v in expected.values())  # the check above compares real effects
    changes = [abs(e.change) for e in result.edges]
    assert changes == sorted(changes, reverse=True)
    top = result.edges[0]
    word = "rose" if top.change > 0 else "fell"
    assert result.lines()[0] == f"{word} by {abs(top.change):.2g} because of `{top.neighbour}`"
    assert top.weight == pytest.approx(float(model.graph.weights[1, NAMES.index(top.neighbour)]))
    json.dumps(result.to_dict())


def test_a_class_without_neighbours_has_no_attribution(tiny_backbone):
    model = _capnet(tiny_backbone())
    _, image = _image_feature(model)
    result = graph_attribution(model, image, "boat")
    assert result.edges == [] and result.lines() == []
    # Alone at every layer, the class's GCN output depends on its own feature only.
    assert result.logit == result.logit_without_edges


def test_removing_every_edge_gives_the_gcn_on_the_edgeless_graph(tiny_backbone):
    model = _capnet(tiny_backbone())
    _, image = _image_feature(model)
    result = graph_attribution(model, image, "dog")
    with torch.no_grad():
        alone = model.gcn(model.prompts().float(), torch.eye(len(NAMES)))
    assert result.logit_without_edges == pytest.approx(_logit(model, image, alone, 1), abs=1e-5)
    # A trained GCN also transforms the class's own feature: that is not the no-GCN logit.
    assert abs(result.logit_without_edges - result.logit_without_gcn) > 1e-3


@pytest.mark.parametrize("arch", ["capnet-tiny", "capnet-tiny-rn"])
def test_removing_every_edge_and_self_loop_gives_the_no_gcn_logit_exactly(tiny_backbone, arch):
    """The issue's check, with the self-loops counted as edges: the model's own forward on an all-zero
    adjacency (bias-free graph convolutions, LeakyReLU(0) = 0) is the no-GCN logit."""
    model = _capnet(tiny_backbone(arch))
    x, image = _image_feature(model)
    result = graph_attribution(model, image, "dog")
    with torch.no_grad():
        model.adjacency.zero_()
        edgeless = float(model.predict_logits(x)[0, 1])
    assert result.logit_without_gcn == pytest.approx(edgeless, abs=1e-5)
    assert abs(result.logit - result.logit_without_gcn) > 1e-3  # the GCN does move this logit


def test_an_untrained_gcn_changes_nothing(tiny_backbone):
    model = _capnet(tiny_backbone(), trained=False)
    _, image = _image_feature(model)
    for cls in ("dog", "cat", "horse", "sheep"):
        result = graph_attribution(model, image, cls)
        assert result.edges and all(e.change == 0.0 for e in result.edges)
        assert result.logit == result.logit_without_gcn == result.logit_without_edges
        assert all(line.startswith("did not move because of `") for line in result.lines())


def test_models_without_a_graph_say_why(tiny_backbone):
    zero = CapNet(tiny_backbone(), NAMES, zero_shot=True)
    assert "zero-shot" in unavailable_reason(zero)
    no_gcn = CapNet(tiny_backbone(seed=1), NAMES, ModelConfig(gcn=GCNConfig(enabled=False)))
    assert "GCN disabled" in unavailable_reason(no_gcn)
    _, image = _image_feature(zero)
    with pytest.raises(ValueError, match="zero-shot"):
        graph_attribution(zero, image, "dog")
    assert unavailable_reason(_capnet(tiny_backbone(seed=2), trained=False)) is None
