"""Builds an open_clip backbone: architecture, weights (tag, cache or local file), device and precision.

Weights are resolved before open_clip is called so that an offline machine gets one clear error at once
instead of a minute of hub retries ending in a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from capnet.config import BackboneConfig

WEIGHTS_ENV = "CAPNET_CLIP_WEIGHTS"
TINY_MODELS = ("capnet-tiny", "capnet-tiny-rn")
_CONFIG_DIR = Path(__file__).parent / "model_configs"

open_clip.add_model_config(_CONFIG_DIR)


class WeightsUnavailableError(RuntimeError):
    """The requested CLIP weights are neither cached, nor on disk, nor downloadable."""


def select_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit name is taken as is."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs; CPU runs stay in fp32, where bf16 is slower and changes AP ties."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class WeightsPlan:
    """What open_clip will be asked for: a file to load (or None for random init) and how."""

    checkpoint: str | None
    quick_gelu: bool
    preprocess_overrides: dict[str, Any]
    source: str


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _cached_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The tag's file in the hub cache, looked for the way open_clip would download it (safetensors first)."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    for name in [*_get_safe_alternatives(filename), filename]:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def plan_weights(cfg: BackboneConfig, *, probe: Callable[[], bool] = _hub_reachable) -> WeightsPlan:
    """Decide where the weights come from, failing early and readably when they cannot be had.

    A weights file comes from ``weights`` or else the environment variable, with a tag or without one;
    random weights only when neither a tag nor a file is named (never as a silent fallback).
    """
    if cfg.name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{cfg.name}' (see open_clip.list_models())")
    local, named_by = cfg.weights, "weights"
    if not local and os.environ.get(WEIGHTS_ENV):
        local, named_by = os.environ[WEIGHTS_ENV], WEIGHTS_ENV
    if local and not Path(local).expanduser().is_file():
        raise WeightsUnavailableError(f"weights file not found: {local} (named by {named_by})")
    if not cfg.pretrained:
        quick = bool(cfg.quick_gelu)
        if local:
            return WeightsPlan(local, quick, {}, f"local file {local}")
        return WeightsPlan(None, quick, {}, "random initialisation")

    tag_cfg = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        raise ValueError(
            f"'{cfg.pretrained}' is not a pretrained tag of {cfg.name} (known: {tags or 'none'}); "
            "for a local weights file or random weights give no tag: --pretrained none "
            "(model.backbone.pretrained: null)"
        )
    quick = tag_cfg.get("quick_gelu", False) if cfg.quick_gelu is None else cfg.quick_gelu
    overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    if local:
        return WeightsPlan(local, quick, overrides, f"{cfg.pretrained} weights from {local}")
    cached = _cached_file(tag_cfg, cfg.cache_dir)
    if cached:
        return WeightsPlan(cached, quick, overrides, f"{cfg.pretrained} weights (cached)")
    if not probe():
        raise WeightsUnavailableError(
            f"{cfg.name} '{cfg.pretrained}' weights are not cached and the model hub cannot be reached: "
            f"pass a local weights file (--weights PATH, model.backbone.weights), set {WEIGHTS_ENV}=PATH, "
            f"go online once so open_clip caches them, or use random weights (--pretrained none)"
        )
    return WeightsPlan(None, quick, overrides, f"{cfg.pretrained} weights (downloaded)")


def frozen_fingerprint(module: nn.Module) -> str:
    """A digest of a module's frozen weights (names, shapes, leading values): equal weights, equal digest.

    Sums are avoided so that the same weights give the same digest on any device.
    """
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            continue
        head = param.detach().flatten()[:64].float().cpu().numpy()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(head.tobytes())
    return digest.hexdigest()[:32]


def image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@dataclass
class Backbone:
    """An open_clip model with its preprocessing and tokenizer, frozen and on its device."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    config: BackboneConfig
    source: str
    device: torch.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def image_size(self) -> int:
        return image_size(self.model.visual)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.model.visual.image_mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.model.visual.image_std)

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model.visual, "transformer")

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


class _NoRandomWeightsWarning(logging.Filter):
    """open_clip warns that no pretrained weights were loaded; for random weights asked for, that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _shape_mismatch(name: str, path: str) -> str | None:
    """The first tensor of a safetensors file whose shape or name does not fit architecture ``name``."""
    if not path.endswith(".safetensors"):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError):
        return None
    expected = {k: tuple(v.shape) for k, v in _random_model(name, 0)[0].state_dict().items()}
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            return f"{key} is {shapes[key]} in the file, {shape} in {name}"
    missing = sorted(set(expected) - set(shapes))
    return f"the file lacks {missing[0]}" if missing else None


def _random_model(name: str, seed: int, **kwargs: Any) -> tuple[nn.Module, Any, Callable]:
    """An open_clip model with random weights drawn from ``seed``, leaving the global random state alone."""
    quiet = _NoRandomWeightsWarning()
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model_and_transforms(name, pretrained=None, **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)


def load_backbone(config: BackboneConfig | None = None, **overrides: Any) -> Backbone:
    """Build the backbone of ``config`` (fields may be overridden by keyword).

    Random weights (no tag, no file) are drawn from ``init_seed``: the same tower in every process.
    """
    cfg = BackboneConfig(**{**(vars(config) if config else {}), **overrides})
    plan = plan_weights(cfg)
    device = select_device(cfg.device)
    kwargs: dict[str, Any] = dict(force_quick_gelu=plan.quick_gelu, cache_dir=cfg.cache_dir, device="cpu")
    kwargs.update({f"image_{k}": v for k, v in plan.preprocess_overrides.items()})
    if plan.checkpoint:
        pretrained = plan.checkpoint
    elif cfg.pretrained and plan.source.endswith("(downloaded)"):
        pretrained = cfg.pretrained
    else:
        pretrained = None
    try:
        if pretrained is None:
            model, _, preprocess = _random_model(cfg.name, cfg.init_seed, **kwargs)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, pretrained=pretrained, **kwargs
            )
    except RuntimeError as exc:  # open_clip wraps download and shape errors alike
        mismatch = _shape_mismatch(cfg.name, plan.checkpoint) if plan.checkpoint else None
        if mismatch:
            raise WeightsUnavailableError(
                f"{plan.checkpoint} does not hold {cfg.name} weights ({mismatch}): pass weights made for "
                f"{cfg.name}, or the model these weights belong to"
            ) from None
        raise WeightsUnavailableError(
            f"could not load {cfg.name} weights: {str(exc).splitlines()[0]}"
        ) from None
    model.eval().requires_grad_(False).to(device)
    tokenizer = open_clip.get_tokenizer(cfg.name)
    return Backbone(model, preprocess, tokenizer, cfg, plan.source, device)
