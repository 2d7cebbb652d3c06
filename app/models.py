"""Which model the app serves: a flag, a checkpoint, the default OpenAI ViT-B/16, or an offline fallback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app import text
from capnet.backbone import WEIGHTS_ENV, Backbone, WeightsUnavailableError, load_backbone
from capnet.checkpoint import CheckpointError, model_from_checkpoint, read_metadata
from capnet.config import BackboneConfig
from capnet.model import CapNet
from capnet.world.pretrain import MODEL_NAME

CHECKPOINTS_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
SYNTH_WEIGHTS = CHECKPOINTS_DIR / "capnet-synth.safetensors"
# The shipped CAPNET trained on Synth-LT, served when no real CLIP weights can be had (load_served_models).
SYNTH_LT_NAME = "capnet-synth-lt.safetensors"
# The full method's Synth-LT model (with the GCN), shipped beside it; served with --checkpoint.
SHIPPED_NAMES = (SYNTH_LT_NAME, "capnet-synth-lt-gcn.safetensors")
GROUPS = ("total", "head", "medium", "tail")


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
    meta: dict = field(default_factory=dict)  # the served checkpoint's metadata (empty without one)
    zero_shot_cache: dict[tuple[str, ...], CapNet] = field(default_factory=dict)

    def trained_for(self, class_names: tuple[str, ...]) -> CapNet | None:
        """The checkpoint's model when these are its classes (in its order), whatever list named them."""
        if self.trained is not None and tuple(self.trained.class_names) == tuple(class_names):
            return self.trained
        return None

    @property
    def synth_lt(self) -> dict:
        """What the checkpoint says of its Synth-LT run (free-form; readers take only what they know)."""
        info = self.meta.get("synth_lt")
        return info if isinstance(info, dict) else {}

    @property
    def ablation_row(self) -> str | None:
        """The ablation row the served checkpoint was chosen from, when it says so."""
        row = self.synth_lt.get("row")
        return row.strip() if isinstance(row, str) and row.strip() else None

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
    """The newest checkpoint a user put there (trained, reproduced); the shipped Synth-LT ones are not."""
    found = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if p.name not in SHIPPED_NAMES and _is_checkpoint(p)), None)


def claimed_map(meta: dict) -> dict[str, float]:
    """The checkpoint's claimed test mAP per group, keeping only values that are fractions."""
    claimed = meta.get("claimed_map")
    if not isinstance(claimed, dict):
        return {}
    return {
        g: float(claimed[g])
        for g in GROUPS
        if isinstance(claimed.get(g), (int, float)) and 0 <= claimed[g] <= 1
    }


def checkpoint_banner(path: Path, served: ServedModels, offline: bool = False) -> str:
    """What is served, said plainly: a trained world model says what it knows and what it claims."""
    trained, backbone, meta = served.trained, served.backbone, served.meta
    if not served.world:
        return (
            f"Serving the trained checkpoint **{path.name}** ({trained.num_classes} classes) "
            f"on {backbone.config.name} ({backbone.source}), with zero-shot alongside."
        )
    on = "Synth-LT, the synthetic world's long-tailed benchmark" if "synth_lt" in meta else "synthetic scenes"
    lead = "**Offline: serving a trained CAPNET**" if offline else "**Serving a trained CAPNET**"
    chosen = ", chosen on validation" if path.name == SYNTH_LT_NAME else ""
    row = f" (the ablation's row {text.md(served.ablation_row)}{chosen})" if served.ablation_row else ""
    banner = (
        f"{lead} ({text.md(path.name)}, {trained.num_classes} classes), trained on {on}{row}, "
        f"on the tiny CLIP {backbone.config.name}, with zero-shot alongside."
    )
    claimed = claimed_map(meta)
    if claimed:
        figures = ", ".join(f"{g} {100 * v:.1f}" for g, v in claimed.items())
        size = served.synth_lt.get("test_size")
        scenes = f", {size:,} test scenes" if isinstance(size, int) and not isinstance(size, bool) else ""
        banner += f" Its claimed test mAP (%{scenes}): {figures}."
    return banner + " It knows synthetic scenes, not real photos."


def _serve_checkpoint(path: Path, choice: ModelChoice) -> ServedModels:
    overrides = {"weights": choice.backbone.weights, "device": choice.backbone.device}
    trained = model_from_checkpoint(path, **overrides).eval()
    # Zero-shot needs a clean tower (adapters change the trained one), on the weights the checkpoint got.
    backbone = load_backbone(trained.config.backbone, device=choice.backbone.device)
    meta = read_metadata(path)
    counts = meta.get("class_freq")
    served = ServedModels(
        backbone,
        "",
        trained,
        None if counts is None else np.asarray(counts),
        world=backbone.config.name == MODEL_NAME,
        meta=meta,
    )
    served.banner = checkpoint_banner(path, served)
    return served


def load_served_models(choice: ModelChoice, checkpoints_dir: Path = CHECKPOINTS_DIR) -> ServedModels:
    """Never raises for missing weights: the fallback is a random tiny model and a banner that says so.

    In order: the --checkpoint named, else the newest checkpoint a user put in ``checkpoints_dir``; else
    zero-shot on the chosen CLIP; without its weights, the shipped CAPNET trained on Synth-LT (when present),
    then zero-shot on the shipped tiny CLIP, then random weights.
    """
    checkpoint = Path(choice.checkpoint) if choice.checkpoint else _newest_checkpoint(checkpoints_dir)
    note = ""
    if checkpoint is not None:
        try:
            return _serve_checkpoint(checkpoint, choice)
        except (WeightsUnavailableError, ValueError) as exc:
            note = f"Checkpoint {checkpoint.name} could not be loaded ({exc}). "
    try:
        backbone = load_backbone(choice.backbone)
        banner = f"{note}Serving zero-shot {backbone.config.name} ({backbone.source})."
        if backbone.source == "random initialisation":
            banner += " **Random weights: its predictions mean nothing.** Serve real ones: `--weights PATH`."
    except WeightsUnavailableError:
        how = f"Real weights: `python app.py --weights PATH` or `{WEIGHTS_ENV}` (see the README)."
        synth_lt = checkpoints_dir / SYNTH_LT_NAME
        if not choice.checkpoint and synth_lt.is_file():
            try:
                served = _serve_checkpoint(synth_lt, choice)
                served.banner = f"{note}{checkpoint_banner(synth_lt, served, offline=True)} {how}"
                return served
            except (WeightsUnavailableError, ValueError) as exc:
                note += f"Checkpoint {synth_lt.name} could not be loaded ({exc}). "
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
