"""From nothing to a benchmark number in one call: fetch, train with the paper's protocol, evaluate, serve.

It says up front what it will download and roughly how long the run takes on the device found, and on a
CPU (hours) it asks before starting.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capnet.backbone import select_device
from capnet.config import RunConfig
from capnet.data.download import Manifest, Options, fetch, human_bytes, plan
from capnet.engine.run import train_run

# Images per second through a ViT-B/16 image tower (forward, with JPEG decoding), by device kind: rough
# figures for the estimate shown before a run, never used for anything else. The CPU figure is the one
# measured on a 2-core machine (README: 3.7 images/s), scaled by cores.
THROUGHPUT = {"cuda": 300.0, "mps": 30.0, "cpu": 1.85}
BACKWARD_COST = 3.0  # a training pass through adapters costs about three forward passes
TTA_VIEWS = 5


class RunRefused(ValueError):
    """A long CPU run that nobody confirmed."""


@dataclass
class Estimate:
    device: str
    download_bytes: int
    image_count: int  # single images fetched one by one (COCO-LT)
    image_bytes: int
    train_images: int
    test_images: int
    seconds: float

    def describe(self) -> str:
        images = f" plus {self.image_count} single images (about {human_bytes(self.image_bytes)})"
        hours = self.seconds / 3600
        span = f"{hours:.1f} hours" if hours >= 1 else f"{max(1, round(self.seconds / 60))} minutes"
        return (
            f"will download {human_bytes(self.download_bytes)}{images if self.image_count else ''}, "
            f"train on {self.train_images} images and test on {self.test_images}; on this {self.device} "
            f"the run takes roughly {span} (an estimate)"
        )


def _throughput(device: torch.device) -> float:
    if device.type == "cpu":
        return THROUGHPUT["cpu"] * (os.cpu_count() or 2)
    return THROUGHPUT.get(device.type, THROUGHPUT["cpu"])


def estimate(manifest: Manifest, root: Path, cfg: RunConfig) -> Estimate:
    """What the run will download (files not yet verified) and how long it will take, roughly."""
    planned = plan(manifest, root)
    device = select_device(cfg.model.backbone.device)
    n_train, n_test = int(manifest.sizes.get("train", 0)), int(manifest.sizes.get("test", 0))
    frozen = cfg.model.adapter.kind == "none"
    passes = n_train * (1 + (0 if frozen else BACKWARD_COST * cfg.train.epochs))
    passes += n_test * (1 + (TTA_VIEWS if cfg.eval.tta else 0))
    images = manifest.images
    missing = 0 if images is None else images.count
    if images is not None and (root / images.to).is_dir():
        missing = max(0, images.count - sum(1 for p in (root / images.to).iterdir() if p.suffix == ".jpg"))
    per_image = images.approx_bytes / max(images.count, 1) if images else 0
    return Estimate(
        device=f"{device.type} ({os.cpu_count()} cores)" if device.type == "cpu" else device.type,
        download_bytes=planned["download_bytes"],
        image_count=missing,
        image_bytes=int(missing * per_image),
        train_images=n_train,
        test_images=n_test,
        seconds=passes / _throughput(device),
    )


def reproduce(
    manifest: Manifest,
    root: str | Path,
    cfg: RunConfig,
    *,
    out_dir: str | Path | None = None,
    checkpoints_dir: str | Path = "checkpoints",
    mirrors: list[str] | None = None,
    options: Options | None = None,
    yes: bool = False,
    ask: Callable[[str], bool] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Fetch the dataset, train and evaluate ``cfg`` on it, copy the checkpoint to where the app serves it.

    ``ask`` puts the CPU question to a person (None: nobody can answer, so a CPU run needs ``yes``).
    Returns None when the person declines.
    """
    root = Path(root)
    cfg.data.root = str(root / manifest.data["root"])
    cfg.data.train_ids = str(root / manifest.data["train_ids"])
    guess = estimate(manifest, root, cfg)
    say(f"capnet reproduce {manifest.name}: {guess.describe()}")
    if guess.device.startswith("cpu") and not yes:
        if ask is None:
            raise RunRefused(
                f"this would train on the CPU for roughly {guess.seconds / 3600:.1f} hours; "
                f"pass --yes to start it without a question"
            )
        if not ask("Train on the CPU anyway? [y/N] "):
            say("nothing was done")
            return None
    fetched = fetch(manifest, root, mirrors, options)
    out = Path(out_dir or Path(cfg.train.out_dir) / cfg.name)
    run = train_run(cfg, out)
    checkpoint, report, results = Path(run.checkpoint), run.report, run.results
    served_dir = Path(checkpoints_dir)
    served_dir.mkdir(parents=True, exist_ok=True)
    served = served_dir / f"capnet-{manifest.name}.safetensors"
    partial = served.with_name(f".{served.name}.part")
    shutil.copyfile(checkpoint, partial)
    os.replace(partial, served)
    return {
        "dataset": manifest.name,
        "downloaded": fetched["downloaded"],
        "images": fetched["images"],
        "checkpoint": str(checkpoint),
        "served": str(served),
        "report": str(report),
        "results": results,
    }
