"""Checkpoints: only the trained tensors, in safetensors, with JSON metadata in the file's header.

Nothing is ever unpickled: a checkpoint handed in by a user is read as raw tensors and a JSON string.
The frozen backbone is rebuilt from its name and tag, so a ViT-B/16 checkpoint is kilobytes, not 600 MB.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from capnet._version import __version__
from capnet.backbone import WEIGHTS_ENV, frozen_fingerprint, load_backbone
from capnet.config import ModelConfig, from_dict, pretrained_tag
from capnet.model import CapNet

FORMAT = "capnet-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or does not belong to the model it is loaded into."""


def save_checkpoint(model: CapNet, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file, then rename) so that an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **(extra or {}),
        "format": FORMAT,
        "capnet_version": __version__,
        "backbone": {"name": model.config.backbone.name, "pretrained": model.config.backbone.pretrained},
        "class_names": model.class_names,
        "zero_shot": model.zero_shot,
        "config": asdict(model.config),
        "backbone_fingerprint": frozen_fingerprint(model.clip),
    }
    tensors = {k: v.contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    return save_atomic(tensors, path, {"capnet": json.dumps(meta)})


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """A safetensors file written to a temp file in the same folder, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("capnet")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path.name} has no capnet metadata: not a capnet checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path.name}: corrupt capnet metadata")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def _check_matches(model: CapNet, meta: dict[str, Any], name: str) -> None:
    want = {"name": meta["backbone"]["name"], "pretrained": pretrained_tag(meta["backbone"]["pretrained"])}
    have = {"name": model.config.backbone.name, "pretrained": model.config.backbone.pretrained}
    if want != have:
        raise CheckpointError(
            f"{name} was trained on backbone {want['name']} ({want['pretrained']}), "
            f"but the model uses {have['name']} ({have['pretrained']})"
        )
    if meta["class_names"] != model.class_names:
        extra = [c for c in meta["class_names"] if c not in model.class_names]
        missing = [c for c in model.class_names if c not in meta["class_names"]]
        detail = (
            f"not in the model: {extra}; not in the checkpoint: {missing}" if extra or missing else "order"
        )
        raise CheckpointError(
            f"{name} has a different class list ({detail}); the checkpoint's classes: {meta['class_names']}"
        )
    if meta.get("backbone_fingerprint") not in (None, frozen_fingerprint(model.clip)):
        raise CheckpointError(
            f"{name} was trained on other {want['name']} weights than the ones loaded "
            f"(pass the weights file it was trained with: --weights PATH, or the same pretrained tag)"
        )


def load_checkpoint(model: CapNet, path: str | Path) -> dict[str, Any]:
    """Load trained tensors into ``model`` after checking backbone and classes; returns the metadata."""
    path = Path(path)
    meta = read_metadata(path)
    _check_matches(model, meta, path.name)
    expected = model.trainable_state_dict()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(expected):
            raise CheckpointError(
                f"{path.name} does not fit this model's trainable parts "
                f"(missing {sorted(set(expected) - keys)[:5]}, unexpected {sorted(keys - set(expected))[:5]})"
            )
        params = dict(model.named_parameters())
        tensors = {key: f.get_tensor(key) for key in keys}
    wrong = [
        f"{k} {tuple(t.shape)} vs {tuple(params[k].shape)}"
        for k, t in tensors.items()
        if t.shape != params[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{path.name}: tensor shapes differ from the model's: {wrong[:3]}")
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor)
    return meta


def _recorded_weights(path: Path, config: ModelConfig) -> str | None:
    """The weights file the checkpoint was trained with, where this machine has it (else None).

    Looked for where it was (an absolute path, or relative to the current folder) and then beside the
    checkpoint, under its own name or the architecture's (a shipped checkpoint next to its shipped weights,
    ``checkpoints/capnet-synth.safetensors``, whatever the trainer's copy was called). The fingerprint check
    of ``load_checkpoint`` refuses a file that holds other weights.
    """
    recorded = config.backbone.weights
    if not recorded:
        return None
    beside = (path.parent / Path(recorded).name, path.parent / f"{config.backbone.name}.safetensors")
    for candidate in (Path(recorded), *beside):
        if candidate.is_file():
            return str(candidate)
    return None


def model_from_checkpoint(path: str | Path, **backbone_overrides: Any) -> CapNet:
    """Rebuild backbone and model from the metadata, then load the trained tensors.

    ``backbone_overrides`` (weights=..., device=..., cache_dir=...) say where this machine finds the weights;
    without ``weights`` the checkpoint's own weights file is used where it is found (then the environment
    variable). A checkpoint trained on a weights file never falls back to random weights.
    """
    path = Path(path)
    meta = read_metadata(path)
    config = from_dict(ModelConfig, meta["config"])
    if config.graph.source != "text":
        raise CheckpointError(
            f"{path.name} uses a co-occurrence graph, which is rebuilt from the training labels: "
            "build CapNet(..., train_labels=...) and call load_checkpoint"
        )
    weights = backbone_overrides.get("weights") or _recorded_weights(path, config)
    if not weights and config.backbone.weights and not os.environ.get(WEIGHTS_ENV):
        raise CheckpointError(
            f"{path.name} was trained on the weights file {config.backbone.weights}, which is not on this "
            f"machine: pass it with --weights PATH (or set {WEIGHTS_ENV})"
        )
    # Paths and devices of the machine that trained it mean nothing here.
    local = {"device": "auto", "cache_dir": None, **backbone_overrides, "weights": weights}
    backbone = load_backbone(config.backbone, **local)
    model = CapNet(backbone, meta["class_names"], config, zero_shot=meta["zero_shot"])
    load_checkpoint(model, path)
    return model
