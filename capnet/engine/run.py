"""One training run from a config: data, checks, model, training, test evaluation (`capnet train`)."""

from __future__ import annotations

import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capnet.backbone import load_backbone
from capnet.config import RunConfig
from capnet.data import DataError, Records, check_images
from capnet.data.sources import load_split
from capnet.engine.evaluate import evaluate, write_report
from capnet.engine.trainer import Distributed, Trainer, split_validation
from capnet.model import CapNet


@dataclass
class RunResult:
    """Where the checkpoint went, which epoch it holds, and the test figures (when evaluated)."""

    checkpoint: Path | None
    kept: dict[str, Any]
    report: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    # False on the other ranks of a distributed run (rank 0 reports).
    main: bool = True


def has_test_split(cfg: RunConfig) -> bool:
    return bool(cfg.data.test) or cfg.data.format in ("voc", "coco", "nus_wide")


def checked(records: Records, skip_bad: bool, what: str) -> Records:
    """Every image opened once; unusable ones stop the run, or are left out and counted (data.skip_bad)."""
    records, problems = check_images(records, skip_bad=skip_bad, desc=f"checking {what} images")
    if problems:
        print(
            f"capnet: skipped {len(problems)} unusable {what} image(s), e.g. {problems[0]}", file=sys.stderr
        )
    return records


def class_difference(train: list[str], other: list[str], other_name: str) -> str:
    """Which classes one side names and the other does not, with a likely spelling for each."""
    parts = []
    for names, there, side in ((train, other, "training"), (other, train, other_name)):
        alone = [n for n in names if n not in there]
        if alone:
            hints = [
                f"{n!r} (did you mean {close[0]!r}?)"
                if (close := difflib.get_close_matches(n, there, 1))
                else repr(n)
                for n in alone
            ]
            parts.append(f"only in the {side} data: {', '.join(hints)}")
    return "; ".join(parts) or f"the same names in another order ({other_name}: {other})"


def check_same_classes(train: Records, test: Records) -> None:
    """A misspelt class in one CSV becomes a class of its own: caught here, before any training."""
    if list(train.class_names) != list(test.class_names):
        raise DataError(
            "the training and test data name different classes ("
            + class_difference(list(train.class_names), list(test.class_names), "test")
            + "): fix the labels, or fix the class list with data.class_names"
        )


def train_run(
    cfg: RunConfig, out_dir: Path, *, resume: bool = False, evaluate_test: bool = True
) -> RunResult:
    """Train (or resume) into ``out_dir``, keep the epoch ``train.keep`` selects, evaluate on the test split.

    Under torchrun every rank trains; rank 0 logs, checkpoints and evaluates.
    """
    dist = Distributed.setup(cfg.model.backbone)
    try:
        pool = checked(load_split(cfg.data, "train"), cfg.data.skip_bad, "training")
        test = None
        if evaluate_test and has_test_split(cfg):
            test = load_split(cfg.data, "test")
            check_same_classes(pool, test)
        train, val = split_validation(pool, cfg.data.val_fraction, cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        backbone = load_backbone(cfg.model.backbone)
        model = CapNet(backbone, pool.class_names, cfg.model, train_labels=train.labels)
        trainer = Trainer(cfg, model, train, val, out_dir)
        checkpoint = trainer.fit(resume=resume)
        result = RunResult(checkpoint, trainer.kept, main=dist.main)
        if dist.main and test is not None:
            test = checked(test, cfg.data.skip_bad, "test")
            report, logits = evaluate(
                model,
                test,
                np.asarray(train.class_freq),
                cfg.eval,
                num_workers=cfg.data.num_workers,
                name=cfg.name,
                extra={"checkpoint": str(checkpoint), "kept": trainer.kept, "config": asdict(cfg)},
            )
            result.report = write_report(report, logits, test, out_dir)
            result.results = report["results"]
        return result
    finally:
        Distributed.teardown()
