"""Resumable training state without pickle: tensors in safetensors, everything else as JSON in its header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from capnet.checkpoint import save_atomic
from capnet.model import CapNet


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _join_optimizer_state(f, meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = f.get_tensor(name)
    for name, value in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    path: Path,
    model: CapNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    extra: dict,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomic: written to a temp file in the same folder, then renamed over the previous state.

    ``extra_tensors`` (names outside "model/" and "optim/") ride along, read back by ``load_state_tensors``.
    """
    tensors = {f"model/{k}": v.contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    tensors.update({k: v.contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    optim_tensors, optim_meta = _split_optimizer_state(optimizer.state_dict())
    tensors.update(optim_tensors)
    meta = {"epoch": epoch, "optimizer": optim_meta, "scheduler": scheduler.state_dict(), **extra}
    save_atomic(tensors, path, {"capnet-train": json.dumps(meta, default=float)})


def load_training_state(path: Path, model: CapNet, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Restore model, optimiser and schedule; returns the metadata (its "epoch" is the last one finished)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["capnet-train"])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.startswith("model/"):
                    params[name[len("model/") :]].copy_(f.get_tensor(name))
        optim_state = _join_optimizer_state(f, meta["optimizer"])
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(meta["scheduler"])
    return meta


def load_state_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The state file's tensors whose names start with ``prefix`` (as saved through ``extra_tensors``)."""
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys() if name.startswith(prefix)}  # noqa: SIM118
