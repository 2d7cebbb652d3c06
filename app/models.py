"""Which model the app serves: a flag, a checkpoint, the default OpenAI ViT-B/16, or an offline fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capnet.backbone import WEIGHTS_ENV, Backbone, WeightsUnavailableError, load_backbone
from capnet.checkpoint import CheckpointError, model_from_checkpoint, read_metadata
from capnet.config import BackboneConfig
from capnet.model import CapNet

CHECKPOINTS_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
SYNTH_WEIGHTS = CHECKPOINTS_DIR / "capnet-synth.safetensors"


@dataclass
class ModelChoice:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    checkpoint: str | None = None


@dataclass
class ServedModels:
    """A clean backbone for open-vocabulary zero-shot, plus the trained model when a checkpoint is loaded."""

    backbone: Backbone
    banner: str
    trained: CapNet | None = None
    trained_counts: np.ndarray | None = None  # training class counts stored in the checkpoint
    world: bool = False  # serving the synthetic world's tiny CLIP: scene classes and sample scenes
    zero_shot_cache: dict[tuple[str, ...], CapNet] = field(default_factory=dict)

    def zero_shot(self, class_names: tuple[str, ...]) -> CapNet:
        if class_names not in self.zero_shot_cache:
            if len(self.zero_shot_cache) > 16:
                self.zero_shot_cache.clear()
            self.zero_shot_cache[class_names] = CapNet(self.backbone, class_names, zero_shot=True).eval()
        return self.zero_shot_cache[class_names]


def _is_checkpoint(path: Path) -> bool:
    try:
        read_metadata(path)
    except CheckpointError:
        return False  # e.g. the shipped tiny CLIP's weights, which live in the same folder
    return True


def _newest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if _is_checkpoint(p)), None)


def load_served_models(choice: ModelChoice, checkpoints_dir: Path = CHECKPOINTS_DIR) -> ServedModels:
    """Never raises for missing weights: the fallback is a random tiny model and a banner that says so."""
    checkpoint = Path(choice.checkpoint) if choice.checkpoint else _newest_checkpoint(checkpoints_dir)
    overrides = {"weights": choice.backbone.weights, "device": choice.backbone.device}
    if checkpoint is not None:
        try:
            trained = model_from_checkpoint(checkpoint, **overrides).eval()
            backbone = load_backbone(trained.config.backbone, **overrides)
            banner = (
                f"Serving the trained checkpoint **{checkpoint.name}** ({trained.num_classes} classes) "
                f"on {backbone.config.name} ({backbone.source}), with zero-shot alongside."
            )
            counts = read_metadata(checkpoint).get("class_freq")
            return ServedModels(backbone, banner, trained, None if counts is None else np.asarray(counts))
        except (WeightsUnavailableError, ValueError) as exc:
            note = f"Checkpoint {checkpoint.name} could not be loaded ({exc}). "
    else:
        note = ""
    try:
        backbone = load_backbone(choice.backbone)
        banner = f"{note}Serving zero-shot {backbone.config.name} ({backbone.source})."
        if backbone.source == "random initialisation":
            banner += " **Random weights: its predictions mean nothing.** Serve real ones: `--weights PATH`."
    except WeightsUnavailableError:
        how = f"Real weights: `python app.py --weights PATH` or `{WEIGHTS_ENV}` (see the README)."
        if SYNTH_WEIGHTS.is_file():
            backbone = load_backbone(
                name="capnet-synth",
                pretrained=None,
                weights=str(SYNTH_WEIGHTS),
                device=choice.backbone.device,
            )
            banner = (
                f"{note}**Offline: serving capnet-synth**, a tiny CLIP trained on synthetic scenes of 20 "
                f"shape classes: it knows those scenes, not real photos. {how}"
            )
            return ServedModels(backbone, banner, world=True)
        backbone = load_backbone(name="capnet-tiny", pretrained=None, device=choice.backbone.device)
        banner = f"{note}**Offline fallback: a tiny CLIP with random weights; its predictions mean nothing.**"
        banner += f" {how}"
    return ServedModels(backbone, banner)
