"""capnet: long-tailed multi-label image recognition with CLIP (the CAPNET method)."""

from capnet._version import __version__
from capnet.adapters import parameter_report
from capnet.backbone import Backbone, WeightsUnavailableError, load_backbone, select_device
from capnet.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from capnet.config import ModelConfig, load_config
from capnet.graph import LabelGraph, cooccurrence_graph, text_graph
from capnet.losses import build_loss
from capnet.metrics import class_groups, lt_map
from capnet.model import CapNet
from capnet.tta import view_transform

__all__ = [
    "Backbone",
    "CapNet",
    "CheckpointError",
    "LabelGraph",
    "ModelConfig",
    "WeightsUnavailableError",
    "__version__",
    "build_loss",
    "class_groups",
    "cooccurrence_graph",
    "load_backbone",
    "load_checkpoint",
    "load_config",
    "lt_map",
    "model_from_checkpoint",
    "parameter_report",
    "save_checkpoint",
    "select_device",
    "text_graph",
    "view_transform",
]
