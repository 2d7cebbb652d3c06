"""CapNet scoring, cached inference, zero-shot mode, calibration and what trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capnet.config import AdapterConfig, ModelConfig
from capnet.model import CapNet, validate_class_names
from capnet.text import ENSEMBLE_TEMPLATES
from tests.common import ODD_NAMES


def _count_text_passes(model: CapNet) -> list[int]:
    calls = [0]  # passes of the prompts through the text tower
    model.prompts.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_predict_reuses_class_features_until_they_change(tiny_backbone):
    model = CapNet(tiny_backbone(), ODD_NAMES).eval()
    calls = _count_text_passes(model)
    images = torch.randn(2, 3, 32, 32)
    first = model.predict(images)
    second = model.predict(images)
    assert calls[0] == 1 and torch.equal(first, second)

    opt = torch.optim.SGD([model.prompts.ctx], lr=1.0)
    model(images).sum().backward()
    opt.step()
    third = model.predict(images)
    assert calls[0] == 3  # one training forward, one recomputation after the step
    assert not torch.equal(first, third)

    with torch.no_grad():
        model.gcn.layers[-1].linear.weight.add_(0.5)  # an in-place edit bumps the tensor version
    model.predict(images)
    model.predict(images)
    assert calls[0] == 4


def test_zero_shot_scores_are_scaled_cosines_of_template_ensembles(tiny_backbone):
    b = tiny_backbone()
    model = CapNet(b, ["cat", "dog", "traffic light"], zero_shot=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        text = []
        for name in model.class_names:
            per_template = b.model.encode_text(b.tokenizer([t.format(name) for t in ENSEMBLE_TEMPLATES]))
            text.append(F.normalize(F.normalize(per_template, dim=-1).mean(0), dim=-1))
        text = torch.stack(text)
        image = F.normalize(b.model.encode_image(images), dim=-1)
    expected = b.model.logit_scale.exp() * image @ text.T
    assert torch.allclose(model.predict_logits(images), expected, atol=1e-4)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    assert model.prompts is None and model.gcn is None


def test_tta_logits_are_the_mean_over_views(tiny_backbone):
    model = CapNet(tiny_backbone(), ["cat", "dog"]).eval()
    views = torch.randn(2, 5, 3, 32, 32)
    per_view = torch.stack([model.predict_logits(views[:, v]) for v in range(5)], dim=1).mean(1)
    assert torch.allclose(model.predict_logits(views), per_view, atol=1e-5)


def test_calibration_flags_the_prior_fraction_of_images(tiny_backbone):
    model = CapNet(tiny_backbone(), ODD_NAMES).eval()
    images = torch.randn(40, 3, 32, 32)
    prior = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.05])
    model.calibrate(model.encode_image(images), prior)
    flagged = (model.predict(images) > 0.5).float().mean(0)
    assert torch.all((flagged - prior).abs() <= 1 / 40 + 1e-6), flagged
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        model.calibrate(model.encode_image(images), 1.0)


def test_gradients_reach_trainable_parts_only(tiny_backbone):
    model = CapNet(tiny_backbone(), ODD_NAMES).train()
    assert not model.clip.training  # frozen backbone stays in eval mode
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"prompts.ctx", "logit_scale", "class_bias"} <= trainable
    assert any(".adapter." in n for n in trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    frozen = [n for n, p in model.clip.named_parameters() if not p.requires_grad]
    assert "visual.conv1.weight" in frozen and "token_embedding.weight" in frozen


def test_no_adapters_means_a_frozen_image_tower(tiny_backbone):
    model = CapNet(tiny_backbone(), ODD_NAMES, ModelConfig(adapter=AdapterConfig(kind="none")))
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert model.peft == "none"


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "empty"), (["cat", " "], "empty class name"), (["cat", "Dog", "dog"], "duplicated.*dog")],
)
def test_bad_label_sets_are_refused(names, message):
    with pytest.raises(ValueError, match=message):
        validate_class_names(names)


def test_recorded_backbone_is_the_one_used(tiny_backbone):
    model = CapNet(tiny_backbone(), ["cat"])
    assert model.config.backbone.name == "capnet-tiny" and model.config.backbone.pretrained is None


def test_set_trainable_freezes_parts_but_checkpoints_keep_them(tiny_backbone):
    model = CapNet(tiny_backbone(), ODD_NAMES)
    everything = set(model.trainable_state_dict())
    model.set_trainable({"gcn", "bias"})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in everything if n.startswith("gcn.")} | {"class_bias"}
    assert set(model.trainable_state_dict()) == everything
    with pytest.raises(ValueError, match="unknown part"):
        model.set_trainable({"text tower"})


def test_cooccurrence_graph_source_needs_and_uses_training_labels(tiny_backbone):
    from capnet.config import GraphConfig
    from capnet.graph import cooccurrence_graph

    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    cfg = ModelConfig(graph=GraphConfig(source="cooccurrence", sparsify="threshold", threshold=0.5))
    with pytest.raises(ValueError, match="needs the training labels"):
        CapNet(tiny_backbone(), ["a", "b", "c"], cfg)
    model = CapNet(tiny_backbone(), ["a", "b", "c"], cfg, train_labels=labels)
    expected = cooccurrence_graph(labels, ["a", "b", "c"], mode="threshold", threshold=0.5)
    assert torch.equal(model.adjacency, expected.adjacency)
    assert model.graph.degree == [1, 1, 0]
