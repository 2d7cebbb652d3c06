"""Labelling image files with a model: ranked probabilities per file, and the table, CSV or JSON of them.

What `capnet predict` does, as functions: the command only reads its arguments and writes the text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from capnet.calibration import Calibration
from capnet.data import DataError, Records, check_images
from capnet.engine.evaluate import score_records
from capnet.model import CapNet

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# The table marks labels at or above the threshold with this sign.
ABOVE = "*"


@dataclass
class Row:
    """One image: its path (as the user named it), the labels above the threshold, the top-k, all scores.

    ``raw_logits`` are the logits without a zero-shot calibration's biases (the scaled cosines); for a
    trained or uncalibrated model they are the logits themselves, of which ``probabilities`` is the sigmoid.
    """

    path: str
    labels: list[str]
    top: dict[str, float]
    probabilities: dict[str, float] = field(repr=False)
    raw_logits: dict[str, float] = field(default_factory=dict, repr=False)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named, folders searched recursively (sorted), in the order given."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    if not files:
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}"
        )
    return files


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid per class, in float64 (CAPNET's scores are independent per class, never softmaxed)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def predict_files(
    model: CapNet,
    paths: Sequence[str | Path],
    *,
    threshold: float = 0.5,
    top: int = 5,
    tta: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    on_skip: Callable[[str], None] | None = None,
    calibration: Calibration | None = None,
) -> list[Row]:
    """Score every readable image under ``paths``; unreadable ones go to ``on_skip`` and are left out.

    ``calibration``: the zero-shot calibration the model carries, so that each row also has the raw logits.
    """
    files = image_files(paths)
    records = Records(
        list(model.class_names),
        [f.stem for f in files],
        files,
        np.zeros((len(files), model.num_classes), np.uint8),
    )
    records, problems = check_images(records, skip_bad=True, desc="reading images")
    if not len(records):
        raise DataError(f"none of the {len(files)} files could be read as an image (e.g. {problems[0]})")
    for problem in problems:
        if on_skip is not None:
            on_skip(problem)
    logits = score_records(model, records, tta=tta, batch_size=batch_size, num_workers=num_workers)
    probs = probabilities(logits)
    raw = calibration.raw_logits(logits) if calibration is not None else logits
    rows = []
    for path, row, raw_row in zip(records.paths, probs, raw):
        order = np.argsort(-row, kind="stable")
        rows.append(
            Row(
                path=str(path),
                labels=[model.class_names[c] for c in order if row[c] >= threshold],
                top={model.class_names[c]: round(float(row[c]), 4) for c in order[:top]},
                probabilities=dict(zip(model.class_names, row.round(6).tolist())),
                raw_logits=dict(zip(model.class_names, raw_row.astype(np.float64).round(5).tolist())),
            )
        )
    return rows


def _table(rows: list[Row], threshold: float) -> str:
    width = max(len(r.path) for r in rows)
    lines = [
        f"{r.path:<{width}}  "
        + ", ".join(f"{name} {p:.2f}{ABOVE if p >= threshold else ''}" for name, p in r.top.items())
        for r in rows
    ]
    return "\n".join([*lines, f"({ABOVE}: at or above the threshold {threshold:g})"])


def _csv(rows: list[Row], threshold: float) -> str:
    frame = pd.DataFrame([{"path": r.path, "labels": ";".join(r.labels), **r.probabilities} for r in rows])
    return frame.to_csv(index=False).rstrip("\n")


def _json(rows: list[Row], threshold: float) -> str:
    return json.dumps(
        [
            {
                "path": r.path,
                "labels": r.labels,
                "top": r.top,
                "probabilities": r.probabilities,
                "raw_logits": r.raw_logits,
            }
            for r in rows
        ],
        indent=1,
    )


FORMATS: dict[str, Callable[[list[Row], float], str]] = {"table": _table, "csv": _csv, "json": _json}


def format_rows(rows: list[Row], fmt: str = "table", threshold: float = 0.5) -> str:
    """The rows as a text table (paths as given, labels above the threshold marked), CSV or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}' (one of {sorted(FORMATS)})")
    return FORMATS[fmt](rows, threshold)
