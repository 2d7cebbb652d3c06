"""capnet: long-tailed multi-label image recognition with CLIP (the CAPNET method).

The public names load on first use (PEP 562), so that `import capnet.config` or `capnet --help` does not
pay for torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

from capnet._version import __version__ as __version__

_HOMES = {
    "parameter_report": "capnet.adapters",
    "Backbone": "capnet.backbone",
    "WeightsUnavailableError": "capnet.backbone",
    "load_backbone": "capnet.backbone",
    "select_device": "capnet.backbone",
    "CheckpointError": "capnet.checkpoint",
    "load_checkpoint": "capnet.checkpoint",
    "model_from_checkpoint": "capnet.checkpoint",
    "save_checkpoint": "capnet.checkpoint",
    "ModelConfig": "capnet.config",
    "load_config": "capnet.config",
    "LabelGraph": "capnet.graph",
    "cooccurrence_graph": "capnet.graph",
    "text_graph": "capnet.graph",
    "build_loss": "capnet.losses",
    "class_groups": "capnet.metrics",
    "lt_map": "capnet.metrics",
    "CapNet": "capnet.model",
    "view_transform": "capnet.tta",
}

__all__ = sorted([*_HOMES, "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'capnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
