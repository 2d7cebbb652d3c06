"""The fine-tune tab: a small labelled set in, a tuned CapNet (and its checkpoint) out, within limits."""

from __future__ import annotations

import math
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.archives import is_unsafe, open_bounded_zip
from app.limits import (
    LR_MAX,
    LR_MIN,
    MAX_EPOCHS,
    MAX_FT_IMAGES,
    MAX_LABELS,
    MAX_SECONDS,
    MIN_FT_IMAGES,
)
from capnet.backbone import Backbone, load_backbone
from capnet.checkpoint import save_checkpoint
from capnet.config import (
    AdapterConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from capnet.data import DataError, Records, check_images, read_csv
from capnet.engine.evaluate import score_records
from capnet.engine.trainer import Trainer, TrainingStopped, split_validation
from capnet.metrics import lt_map
from capnet.model import CapNet
from capnet.world.squares import write_csv_dataset

MAX_IMAGES = MAX_FT_IMAGES
PARTS = ("prompts", "gcn", "adapters")
LOSSES = ("dbfocal", "bce", "focal", "asl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class JobSlot:
    """One fine-tune at a time on this server, held by one browser session, which alone may cancel it.

    Cancelling is cooperative: the run checks its ticket before every step and stops itself. (Gradio's
    own task cancellation leaves a synchronous generator running on in its thread, racing the next run.)
    A slot held past twice the time limit counts as free: its client vanished mid-step.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._owner: str | None = None
        self._ticket = threading.Event()

    def try_start(self, owner: str) -> threading.Event | None:
        """The new run's ticket (set means: stop), or None while another run holds the slot."""
        with self._lock:
            now = time.monotonic()
            if self._since is not None and now - self._since < 2 * MAX_SECONDS + 60:
                return None
            self._since, self._owner, self._ticket = now, owner, threading.Event()
            return self._ticket

    def held_by(self, owner: str) -> bool:
        with self._lock:
            return self._since is not None and self._owner == owner

    def cancel(self, owner: str) -> bool:
        with self._lock:
            if self._since is None or self._owner != owner:
                return False
            self._ticket.set()
            return True

    def finish(self, ticket: threading.Event) -> None:
        """Frees the slot if ``ticket``'s run still holds it (a stale run must not free its successor's)."""
        with self._lock:
            if ticket is self._ticket:
                self._since = self._owner = None


def remove_tree(folder: Path) -> None:
    """Remove a job's folder whatever it holds; a folder already gone is fine."""
    shutil.rmtree(folder, ignore_errors=True)


class Cancelled(Exception):
    """The run's owner cancelled it; nothing was saved."""


SLOT = JobSlot()


@dataclass
class Job:
    records: Records
    problems: list[str] = field(default_factory=list)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Refuse archives that are not zips, too large, too many files, or escape the folder."""
    zf, members = open_bounded_zip(archive, archive.name, DataError)
    with zf:
        for m in members:
            if is_unsafe(m):
                raise DataError(f"the zip holds an unsafe path: {m.filename}")
        try:
            zf.extractall(dest)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{archive.name} is corrupt ({exc.__class__.__name__})") from None


def job_from_zip(archive: str | Path, workdir: Path) -> Job:
    """A zip of images plus one CSV (`path,labels`, labels separated by ';')."""
    _safe_extract(Path(archive), workdir)
    csvs = [p for p in workdir.rglob("*.csv") if not p.name.startswith("._")]
    if len(csvs) != 1:
        raise DataError(f"the zip needs exactly one CSV file with columns path,labels (found {len(csvs)})")
    return _checked(read_csv(csvs[0], csvs[0].parent))


def job_from_images(paths: list[str], labels_text: str) -> Job:
    """Uploaded images with typed labels: one line per image, in upload order, labels separated by ';'."""
    lines = [line for line in (labels_text or "").splitlines() if line.strip()]
    if not paths:
        raise DataError("upload images or a zip, or use the bundled sample")
    if len(lines) != len(paths):
        raise DataError(f"{len(paths)} images but {len(lines)} label lines: give one line per image")
    rows = [[n.strip() for n in line.split(";") if n.strip()] for line in lines]
    names = sorted({n for row in rows for n in row})
    if not names:
        raise DataError("no labels given")
    labels = np.array([[int(n in row) for n in names] for row in rows], dtype=np.uint8)
    records = Records(names, [Path(p).stem for p in paths], [Path(p) for p in paths], labels)
    return _checked(records)


def bundled_sample(workdir: Path) -> Job:
    csv = write_csv_dataset(workdir, n=80, seed=5)
    return _checked(read_csv(csv, csv.parent))


def _checked(records: Records) -> Job:
    if len(records) > MAX_IMAGES:
        raise DataError(f"{len(records)} images; the app fine-tunes on at most {MAX_IMAGES}")
    if len(records.class_names) > MAX_LABELS:
        raise DataError(
            f"{len(records.class_names)} classes; the app fine-tunes at most {MAX_LABELS} "
            "(as many as Predict serves)"
        )
    records, problems = check_images(records, skip_bad=True, desc="checking images")
    if len(records) < MIN_FT_IMAGES:
        why = f" ({'; '.join(problems[:3])}{'; …' if len(problems) > 3 else ''})" if problems else ""
        raise DataError(f"only {len(records)} usable images: at least {MIN_FT_IMAGES} are needed{why}")
    if len(records.class_names) < 2:
        raise DataError("at least two classes are needed")
    return Job(records, problems)


def check_settings(parts: set[str], epochs: float, lr: float, loss: str) -> None:
    """The numbers a user typed, refused with one line when out of bounds (never silently clamped)."""
    if not parts:
        raise DataError("choose at least one part to train")
    if not set(parts) <= set(PARTS):
        raise DataError(f"the parts that can train are {', '.join(PARTS)}")
    if epochs is None or not float(epochs).is_integer() or not 1 <= epochs <= MAX_EPOCHS:
        raise DataError(f"epochs must be a whole number from 1 to {MAX_EPOCHS} (got {epochs})")
    if lr is None or not math.isfinite(lr) or not LR_MIN <= lr <= LR_MAX:
        raise DataError(f"the learning rate must lie between {LR_MIN:g} and {LR_MAX:g} (got {lr})")
    if loss not in LOSSES:
        raise DataError(f"the loss must be one of {', '.join(LOSSES)}")


@dataclass
class Update:
    epoch: int
    epochs: int
    losses: list[float]
    message: str
    model: CapNet | None = None
    checkpoint: Path | None = None
    before: float | None = None
    after: float | None = None


def _held_out_map(model: CapNet, held: Records, train: Records) -> float:
    return lt_map(score_records(model, held), held.labels, train.class_freq)["total"]


def run_job(
    job: Job,
    backbone_factory,
    *,
    parts: set[str],
    epochs: int,
    lr: float,
    loss: str,
    workdir: Path,
    seed: int = 0,
    ticket: threading.Event | None = None,
) -> Iterator[Update]:
    """Train with the capnet engine one epoch at a time, yielding progress.

    Everything the run writes goes under ``workdir``, which the caller removes when the job ends. A set
    ``ticket`` raises ``Cancelled`` before the next step; at the time limit the run stops within a step
    and keeps what it has learnt.
    """
    check_settings(parts, epochs, lr, loss)
    ticket = ticket if ticket is not None else threading.Event()

    def check() -> None:
        if ticket.is_set():
            raise Cancelled(f"after {len(losses)} of {epochs} epochs; nothing was saved")

    epochs, losses = int(epochs), []
    train, held = split_validation(job.records, 0.2, seed)
    if held is None or held.labels.sum() == 0:
        raise DataError("the held-out fifth of the images has no labels: upload more images")
    backbone: Backbone = backbone_factory()
    adapter = AdapterConfig(kind="auto" if "adapters" in parts else "none")
    model_cfg = ModelConfig(backbone=backbone.config, adapter=adapter)
    model = CapNet(backbone, train.class_names, model_cfg)
    model.set_trainable(parts | {"bias", "temperature"})
    check()
    before = _held_out_map(model, held, train)
    check()
    cfg = RunConfig(
        name="finetune",
        model=model_cfg,
        data=DataConfig(num_workers=0, val_fraction=0.0),
        loss=LossConfig(name=loss),
        eval=EvalConfig(tta=False),
        train=TrainConfig(
            epochs=epochs,
            batch_size=16,
            optimizer="adamw",
            lr=lr,
            warmup_epochs=0.0,
            cache_dir=str(workdir / "cache"),
            out_dir=str(workdir),
            seed=seed,
        ),
    )
    trainer = Trainer(cfg, model, train, None, workdir / "run")
    deadline = time.monotonic() + MAX_SECONDS
    yield Update(0, epochs, losses, f"before: held-out mAP {100 * before:.1f}", before=before)
    for epoch in range(epochs):
        try:
            trainer.fit(
                resume=epoch > 0,
                stop_after=1,
                should_stop=lambda: ticket.is_set() or time.monotonic() > deadline,
            )
        except TrainingStopped:
            check()
            yield Update(epoch, epochs, losses, f"time limit of {MAX_SECONDS} s reached in epoch {epoch + 1}")
            break
        losses.append(trainer.last_epoch["train_loss"])
        yield Update(epoch + 1, epochs, losses, f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    check()
    model.eval()
    after = _held_out_map(model, held, train)
    checkpoint = save_checkpoint(
        model,
        workdir / "finetuned.safetensors",
        {"class_freq": train.class_freq.tolist(), "num_train": len(train), "run": "app fine-tune"},
    )
    yield Update(
        len(losses),
        epochs,
        losses,
        f"done: held-out mAP {100 * before:.1f} before, {100 * after:.1f} after",
        model=model,
        checkpoint=checkpoint,
        before=before,
        after=after,
    )


def default_backbone_factory(served_backbone: Backbone):
    """A fresh copy of the served backbone for each job (adapters attach in place)."""
    cfg = served_backbone.config
    return lambda: load_backbone(cfg)
