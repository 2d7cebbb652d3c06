"""capnet.engine.state on its own: the resumable state file read back with safetensors itself, and an exact
restore of model, optimiser and schedule (the end-to-end resume runs are in test_engine.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from capnet.config import ModelConfig, PromptConfig
from capnet.engine.state import (
    load_state_tensors,
    load_training_state,
    read_state_meta,
    read_state_shapes,
    save_training_state,
)
from capnet.model import CapNet

CLASSES = ["cat", "dog", "traffic light"]


class CountingSGD(torch.optim.SGD):
    """SGD that also keeps state of its own, as other optimisers do: a plain number for every parameter
    and, in the first group, a running sum of gradients; state names may hold a slash."""

    def step(self, closure=None):
        loss = super().step(closure)
        first = {id(p) for p in self.param_groups[0]["params"]}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["count/steps"] = self.state[p].get("count/steps", 0) + 1
                    if id(p) in first:
                        self.state[p]["sum/grad"] = self.state[p].get("sum/grad", 0) + p.grad.detach().clone()
        return loss


def build(tiny_backbone):
    """A tiny model, an optimiser over its trainable tensors in two groups (momentum in the first only,
    so the second's state is plain numbers alone) and a per-step schedule."""
    model = CapNet(tiny_backbone(), CLASSES, ModelConfig(prompt=PromptConfig(n_ctx=2)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = CountingSGD(
        [{"params": trainable[:2], "weight_decay": 0.01, "momentum": 0.9}, {"params": trainable[2:]}], lr=0.1
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(
            (p * torch.randn(p.shape, generator=gen)).sum() for p in model.parameters() if p.requires_grad
        )
        loss.backward()
        optimizer.step()
        scheduler.step()


@pytest.fixture
def saved(tiny_backbone, tmp_path):
    model, optimizer, scheduler = build(tiny_backbone)
    train_steps(model, optimizer, scheduler, 2, seed=1)
    kept = {"kept/prompts.ctx": torch.arange(6.0).reshape(2, 3), "kept/class_bias": torch.ones(3)}
    path = tmp_path / "state.safetensors"
    extra = {"kept": {"epoch": 2, "val_total": np.float32(0.25)}, "identity": {"backbone": "capnet-tiny"}}
    save_training_state(path, model, optimizer, scheduler, 4, extra, extra_tensors=kept)
    return path, model, optimizer, scheduler, kept


def test_the_file_holds_model_optimiser_and_extra_tensors_by_name(saved):
    path, model, optimizer, scheduler, kept = saved
    params = dict(model.named_parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state_tensors = {
        f"optim/{index[id(p)]}/{key}": value
        for p, state in optimizer.state.items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    assert set(state_tensors) == {f"optim/{i}/{k}" for i in (0, 1) for k in ("momentum_buffer", "sum/grad")}
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        assert names == {f"model/{n}" for n in trainable} | set(state_tensors) | set(kept)
        for n in trainable:
            assert torch.equal(f.get_tensor(f"model/{n}"), params[n].detach())
        for name, value in {**state_tensors, **kept}.items():
            assert torch.equal(f.get_tensor(name), value), name
        meta = json.loads(f.metadata()["capnet-train"])
    assert set(meta) == {"epoch", "optimizer", "scheduler", "kept", "identity"}
    assert meta["epoch"] == 4
    assert meta["kept"] == {"epoch": 2, "val_total": 0.25} and meta["identity"] == {"backbone": "capnet-tiny"}
    assert meta["optimizer"]["scalars"] == {f"{i}/count/steps": 2 for i in range(len(trainable))}
    groups = optimizer.state_dict()["param_groups"]
    assert meta["optimizer"]["param_groups"] == json.loads(json.dumps(groups))
    assert [g["params"] for g in groups] == [[0, 1], list(range(2, len(trainable)))]
    assert meta["scheduler"]["last_epoch"] == 2 and meta["scheduler"]["_last_lr"] == pytest.approx(
        [0.1 / 3] * 2
    )
    assert read_state_meta(path) == meta


def test_shapes_and_extra_tensors_are_read_by_prefix(saved):
    path, model, _, _, kept = saved
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert read_state_shapes(path, "model/") == shapes
    assert read_state_shapes(path, "kept/") == {"prompts.ctx": (2, 3), "class_bias": (3,)}
    got = load_state_tensors(path, "kept/")
    assert got.keys() == kept.keys()
    for name, value in kept.items():
        assert torch.equal(got[name], value)
    assert load_state_tensors(path, "nothing/") == {}


def test_a_restored_state_continues_exactly_like_the_original(saved, tiny_backbone):
    path, model, optimizer, scheduler, _ = saved
    fresh, fresh_opt, fresh_sched = build(tiny_backbone)
    frozen = {n: p.detach().clone() for n, p in fresh.named_parameters() if not p.requires_grad}
    assert not torch.equal(fresh.prompts.ctx, model.prompts.ctx)  # loading has work to do
    meta = load_training_state(path, fresh, fresh_opt, fresh_sched)
    assert meta == read_state_meta(path)
    for name, tensor in model.trainable_state_dict().items():
        assert torch.equal(fresh.trainable_state_dict()[name], tensor), name
    for name, p in fresh.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name
    want, got = optimizer.state_dict(), fresh_opt.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for i, slots in want["state"].items():
        assert got["state"][i].keys() == slots.keys()
        assert got["state"][i]["count/steps"] == slots["count/steps"] == 2
        for key in ("momentum_buffer", "sum/grad") if i < 2 else ():
            assert torch.equal(got["state"][i][key], slots[key])
    assert [set(slots) for i, slots in sorted(want["state"].items())][1:3] == [
        {"momentum_buffer", "sum/grad", "count/steps"},
        {"count/steps"},
    ]
    assert fresh_sched.state_dict() == scheduler.state_dict()
    # Two more steps on each give the same tensors: momentum and learning rate came back, not only weights.
    train_steps(model, optimizer, scheduler, 2, seed=7)
    train_steps(fresh, fresh_opt, fresh_sched, 2, seed=7)
    for name, tensor in model.trainable_state_dict().items():
        assert torch.equal(fresh.trainable_state_dict()[name], tensor), name
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr() == pytest.approx([0.1 / 5] * 2)


def test_saving_again_replaces_the_file_and_leaves_no_temporary_one(saved):
    path, model, optimizer, scheduler, _ = saved
    save_training_state(path, model, optimizer, scheduler, 5, {})
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert read_state_meta(path)["epoch"] == 5
    assert load_state_tensors(path, "kept/") == {}
