"""Parameter-efficient tuning of the image tower: AdaptFormer adapters, LoRA, bias/norm tuning.

Each method starts as an exact identity (zero-initialised up-projection or LoRA factor), so attaching it
never changes an untrained model's predictions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from capnet.config import AdapterConfig


class Adapter(nn.Module):
    """Bottleneck MLP (down -> ReLU -> up) whose output is scaled and added beside the block's MLP."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(x)))


class MLPWithAdapter(nn.Module):
    """Parallel AdaptFormer: mlp(x) + adapter(x), keeping the frozen MLP untouched."""

    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x).to(x.dtype)


class LoRA(nn.Module):
    """A parametrization W -> W + (alpha / r) B A, with B zero-initialised."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.a, a=5**0.5)
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.scaling * (self.b @ self.a)).to(weight.dtype)


def _blocks(visual: nn.Module) -> list[nn.Module]:
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        raise ValueError(
            f"{type(visual).__name__} has no transformer blocks: adapters and LoRA need a ViT tower"
        )
    return list(transformer.resblocks)


def add_adapters(visual: nn.Module, bottleneck: int, scale: float) -> list[Adapter]:
    adapters = []
    for block in _blocks(visual):
        dim = block.mlp.c_fc.in_features
        adapter = Adapter(dim, bottleneck, scale).to(block.mlp.c_fc.weight.device)
        block.mlp = MLPWithAdapter(block.mlp, adapter)
        adapters.append(adapter)
    return adapters


def add_lora(visual: nn.Module, rank: int, alpha: float, targets: list[str]) -> list[LoRA]:
    """LoRA on named Linear layers of every block (the fused qkv of MultiheadAttention is not a Linear).

    Every target is checked before any layer changes, so a bad target leaves the tower as it was.
    """
    layers = []
    for block in _blocks(visual):
        for target in targets:
            try:
                layer = block.get_submodule(target)
            except AttributeError:
                raise ValueError(f"LoRA target '{target}' does not exist in {type(block).__name__}") from None
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"LoRA target '{target}' is a {type(layer).__name__}, not an nn.Linear")
            layers.append(layer)
    loras = []
    for layer in layers:
        lora = LoRA(layer.out_features, layer.in_features, rank, alpha).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", lora)
        loras.append(lora)
    return loras


def enable_bias_norm(visual: nn.Module) -> list[nn.Parameter]:
    """Unfreeze biases and normalisation affine parameters (BitFit-style tuning for ResNet towers)."""
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    params = []
    for module in visual.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, norms):  # in_proj_bias of attention too
                param.requires_grad_(True)
                params.append(param)
    return params


def resolve_kind(config: AdapterConfig, visual: nn.Module) -> str:
    if config.kind != "auto":
        return config.kind
    return "adaptformer" if hasattr(visual, "transformer") else "bias_norm"


def apply_peft(visual: nn.Module, config: AdapterConfig) -> str:
    """Attach the configured tuning method to a frozen image tower; returns the method used."""
    kind = resolve_kind(config, visual)
    if getattr(visual, "capnet_peft", "none") != "none":
        raise ValueError(
            "this image tower already carries adapters from another model: load a fresh backbone"
        )
    if kind == "adaptformer":
        add_adapters(visual, config.bottleneck, config.scale)
    elif kind == "lora":
        add_lora(visual, config.lora_rank, config.lora_alpha, config.lora_targets)
    elif kind == "bias_norm":
        enable_bias_norm(visual)
    elif kind != "none":
        raise ValueError(f"unknown adapter kind '{kind}'")
    visual.capnet_peft = kind
    return kind


def parameter_report(model: nn.Module) -> dict[str, Any]:
    """Trainable against total parameters, per top-level child and overall."""
    rows = {}
    for name, child in model.named_children():
        total = sum(p.numel() for p in child.parameters())
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        rows[name] = {"trainable": trainable, "total": total}
    direct = list(model.named_parameters(recurse=False))
    for name, param in direct:
        rows[name] = {"trainable": param.numel() if param.requires_grad else 0, "total": param.numel()}
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"components": rows, "trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}
