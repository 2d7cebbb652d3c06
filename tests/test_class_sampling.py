"""Training on a subset of classes per step (TrainConfig.classes_per_step) for large label sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capnet.config import ModelConfig, PromptConfig, RunConfig, from_dict
from capnet.data import Records
from capnet.engine.trainer import Trainer, sample_classes
from capnet.model import CapNet
from capnet.world.squares import draw
from tests.common import ODD_NAMES, VOC_CLASSES


def test_prompt_subset_equals_the_rows_of_the_full_pass(tiny_backbone):
    model = CapNet(tiny_backbone(), VOC_CLASSES + ODD_NAMES[:2], ModelConfig(prompt=PromptConfig(n_ctx=4)))
    classes = torch.tensor([0, 3, 20, 21])  # short names and the two longest ones
    with torch.no_grad():
        full = model.prompts()
        torch.testing.assert_close(model.prompts(classes), full[classes], rtol=0, atol=1e-5)
        torch.testing.assert_close(model.prompts(torch.tensor([5])), full[5:6], rtol=0, atol=1e-5)


def test_banked_features_match_and_only_sampled_contexts_get_gradients(tiny_backbone):
    model = CapNet(tiny_backbone(), VOC_CLASSES, ModelConfig(prompt=PromptConfig(n_ctx=4))).train()
    with torch.no_grad():
        model.gcn.layers[-1].linear.weight.normal_(0, 0.1)  # a GCN that mixes classes
        full = model.class_features()
    classes = torch.tensor([1, 7, 12])
    feats = model.class_features(classes)
    torch.testing.assert_close(feats, full, rtol=0, atol=1e-5)  # fresh bank: the same features
    (feats * torch.randn_like(feats)).sum().backward()
    grad = model.prompts.ctx.grad
    touched = grad.flatten(1).abs().sum(1) > 0
    assert touched.tolist() == [c in (1, 7, 12) for c in range(len(VOC_CLASSES))]
    assert model.gcn.layers[0].linear.weight.grad is not None

    # A stepped context changes its class at once and the others only at the next refresh.
    with torch.no_grad():
        model.prompts.ctx.add_(torch.randn_like(model.prompts.ctx))
    moved = model.class_features(torch.tensor([2])).detach()
    with torch.no_grad():
        exact = model.class_features()
        model.refresh_feature_bank()
        torch.testing.assert_close(model.class_features(torch.tensor([2])), exact, rtol=0, atol=1e-5)
    without_gcn = [c for c in range(len(VOC_CLASSES)) if model.adjacency[2, c] == 0]
    assert not torch.allclose(moved[without_gcn], exact[without_gcn], atol=1e-3)


def test_sample_classes_puts_the_batch_positives_first():
    targets = torch.zeros(4, 50)
    targets[0, 3] = targets[1, 40] = targets[3, 3] = targets[2, 17] = 1
    torch.manual_seed(0)
    picked = sample_classes(targets, 10)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    assert {3, 17, 40} <= set(picked.tolist()) and picked.tolist() == sorted(picked.tolist())
    few = sample_classes(targets, 2)
    assert len(few) == 2 and set(few.tolist()) <= {3, 17, 40}
    assert len(sample_classes(targets, 80)) == 50


def _records(tmp_path, names, n=12):
    rng = np.random.default_rng(0)
    labels = (rng.random((n, len(names))) < 0.3).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, len(names), n)] = 1
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.jpg")
        draw(labels[i, :5], i).save(paths[-1])
    return Records(names, [str(i) for i in range(n)], paths, labels)


def test_training_with_classes_per_step(tmp_path, tiny_backbone):
    names = VOC_CLASSES[:10]
    cfg = from_dict(
        RunConfig,
        {
            "model": {"prompt": {"n_ctx": 4}, "adapter": {"kind": "none"}},
            "data": {"num_workers": 0, "val_fraction": 0},
            "train": {"epochs": 2, "batch_size": 4, "classes_per_step": 3, "cache_dir": str(tmp_path / "c")},
        },
    )
    model = CapNet(tiny_backbone(), names, cfg.model)
    before = model.prompts.ctx.detach().clone()
    trainer = Trainer(cfg, model, _records(tmp_path, names), None, tmp_path / "run")
    assert trainer.classes_per_step == 3
    assert trainer.fit() is not None
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(row["train_loss"]) for row in log)
    assert not torch.equal(before, model.prompts.ctx.detach())
    # As many classes as the label set (or more) is the exact path.
    cfg.train.classes_per_step = 10
    assert Trainer(cfg, model, _records(tmp_path, names), None, tmp_path / "b").classes_per_step is None


def test_chunked_text_pass_gives_the_same_features_and_gradients(tiny_backbone):
    names = VOC_CLASSES + [n for n in ODD_NAMES if n not in VOC_CLASSES]
    torch.manual_seed(0)
    whole = CapNet(tiny_backbone(), names, ModelConfig(prompt=PromptConfig(n_ctx=4))).train()
    torch.manual_seed(0)
    chunked = CapNet(tiny_backbone(), names, ModelConfig(prompt=PromptConfig(n_ctx=4, class_chunk=4))).train()
    torch.testing.assert_close(chunked.prompts.ctx, whole.prompts.ctx, rtol=0, atol=0)
    weights = torch.randn(len(names), whole.text_features.shape[1])
    for model in (whole, chunked):
        (model.class_features() * weights).sum().backward()
    torch.testing.assert_close(chunked.class_features(), whole.class_features(), rtol=0, atol=1e-5)
    scale = float(whole.prompts.ctx.grad.abs().max())  # float32 rounding of differently cut passes
    torch.testing.assert_close(chunked.prompts.ctx.grad, whole.prompts.ctx.grad, rtol=0, atol=1e-5 * scale)
    subset = torch.tensor([0, 2, 5, 7, 11, 19, 20, 21, 22])  # more than one chunk, with the long names
    with torch.no_grad():
        torch.testing.assert_close(chunked.prompts(subset), whole.prompts(subset), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="class_chunk"):
        CapNet(tiny_backbone(), names, ModelConfig(prompt=PromptConfig(class_chunk=0)))
