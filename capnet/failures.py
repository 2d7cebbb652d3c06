"""Failure patterns in a ``capnet eval`` report: where each class's ranking fails, and with which classes.

Three views, each a pandas table that the dashboard plots and each filterable to one class group (head,
medium, tail: the report's training-frequency groups):

- per-class precision-recall curves (scikit-learn's ``precision_recall_curve``);
- confusions: for each class, which other classes are present in its ``k`` highest-scored negatives (a
  tail class confused with a head class it co-occurs with shows up here) and in its ``k`` lowest-scored
  positives (what the missed images show instead). Ties in score are broken by image order, so the
  tables are deterministic;
- a reliability diagram: all (image, class) probabilities of a group in equal-width bins, the bin's mean
  probability against the observed frequency of the class being present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve

from capnet.engine.evaluate import REPORT_JSON, SCORES_CSV

GROUPS = ("head", "medium", "tail")


@dataclass
class EvalScores:
    """An evaluation's per-image probabilities and true labels, with each class's group."""

    class_names: list[str]
    groups: list[str]
    train_counts: np.ndarray  # (C,)
    image_ids: list[str]
    probs: np.ndarray  # (N, C) float64
    labels: np.ndarray  # (N, C) int 0/1

    def classes_in(self, group: str | None = None) -> list[int]:
        """Indices of the classes of ``group`` (every class when None)."""
        if group is None:
            return list(range(len(self.class_names)))
        if group not in GROUPS:
            raise ValueError(f"unknown class group '{group}' (choose from {list(GROUPS)})")
        return [c for c, g in enumerate(self.groups) if g == group]


def load_scores(report_dir: str | Path) -> EvalScores:
    """Read ``report.json`` and ``scores.csv`` as ``capnet.engine.evaluate.write_report`` writes them."""
    folder = Path(report_dir)
    try:
        report = json.loads((folder / REPORT_JSON).read_text())
        table = pd.read_csv(folder / SCORES_CSV, dtype={"image_id": str})
    except FileNotFoundError as exc:
        raise ValueError(f"not an evaluation report folder: {Path(exc.filename).name} is missing") from None
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"unreadable evaluation report in {folder.name} ({exc.__class__.__name__})"
        ) from None
    return scores_from(report, table)


def scores_from(report: dict, table: pd.DataFrame) -> EvalScores:
    """The scores of a report already read (the app reads reports from zips as well as folders)."""
    names = [str(n) for n in report.get("class_names", [])]
    rows = {str(r.get("class")): r for r in report.get("per_class", [])}
    missing = [n for n in names if n not in rows or f"p:{n}" not in table or f"y:{n}" not in table]
    if not names or missing:
        raise ValueError(f"the report and its scores disagree about the classes (e.g. {missing[:3]})")
    try:
        probs = table[[f"p:{n}" for n in names]].to_numpy(dtype=np.float64)
        labels = table[[f"y:{n}" for n in names]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("scores.csv holds a probability or label that is not a number") from None
    if not (np.isfinite(probs).all() and np.isin(labels, (0, 1)).all()):
        raise ValueError("scores.csv holds a missing probability, or a label other than 0 or 1")
    return EvalScores(
        class_names=names,
        groups=[str(rows[n]["group"]) for n in names],
        train_counts=np.array([int(rows[n]["train_count"]) for n in names]),
        image_ids=table["image_id"].astype(str).tolist(),
        probs=probs,
        labels=labels.astype(np.int64),
    )


def pr_curves(scores: EvalScores, group: str | None = None) -> pd.DataFrame:
    """One row per curve point: class, group, precision, recall, threshold (NaN at the curve's end), ap.

    Classes with no positive test image have no curve and are left out.
    """
    frames = []
    for c in scores.classes_in(group):
        y, p = scores.labels[:, c], scores.probs[:, c]
        if y.sum() == 0:
            continue
        precision, recall, thresholds = precision_recall_curve(y, p)
        frames.append(
            pd.DataFrame(
                {
                    "class": scores.class_names[c],
                    "group": scores.groups[c],
                    "precision": precision,
                    "recall": recall,
                    "threshold": np.append(thresholds, np.nan),
                    "ap": average_precision_score(y, p),
                }
            )
        )
    columns = ["class", "group", "precision", "recall", "threshold", "ap"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _ranked(values: np.ndarray, candidates: np.ndarray, *, descending: bool) -> np.ndarray:
    """``candidates`` sorted by value (ties by index order)."""
    keys = -values[candidates] if descending else values[candidates]
    return candidates[np.lexsort((candidates, keys))]


def confusions(
    scores: EvalScores, k: int = 10, *, group: str | None = None, top: int | None = 5
) -> pd.DataFrame:
    """For each class (of ``group``): the classes present in its k highest-scored negatives ("negatives")
    and in its k lowest-scored positives ("positives"), with counts, most frequent first.

    Columns: class, group, kind, images (how many of the k there were), other, count, share (count /
    images). ``top`` keeps the most frequent few per class and kind (None: all with a count above 0).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    rows = []
    for c in scores.classes_in(group):
        p, y = scores.probs[:, c], scores.labels[:, c]
        for kind, pool, descending in (
            ("negatives", np.flatnonzero(y == 0), True),
            ("positives", np.flatnonzero(y == 1), False),
        ):
            chosen = _ranked(p, pool, descending=descending)[:k]
            if chosen.size == 0:
                continue
            counts = scores.labels[chosen].sum(axis=0)
            counts[c] = 0
            others = sorted(np.flatnonzero(counts > 0), key=lambda j: (-counts[j], scores.class_names[j]))
            for j in others[:top] if top is not None else others:
                rows.append(
                    {
                        "class": scores.class_names[c],
                        "group": scores.groups[c],
                        "kind": kind,
                        "images": int(chosen.size),
                        "other": scores.class_names[j],
                        "count": int(counts[j]),
                        "share": float(counts[j] / chosen.size),
                    }
                )
    columns = ["class", "group", "kind", "images", "other", "count", "share"]
    return pd.DataFrame(rows, columns=columns)


def reliability(scores: EvalScores, bins: int = 10, *, group: str | None = None) -> pd.DataFrame:
    """Binned mean probability against observed frequency, per class group (or for ``group`` only).

    Columns: group, bin, lower, upper, count, mean_probability, observed_frequency; empty bins are left
    out. Bins are equal-width on [0, 1], each closed on the left (the last one on both sides).
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for name in GROUPS if group is None else (group,):
        classes = scores.classes_in(name)
        if not classes:
            continue
        p = scores.probs[:, classes].ravel()
        y = scores.labels[:, classes].ravel()
        index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
        for b in range(bins):
            inside = index == b
            if inside.any():
                rows.append(
                    {
                        "group": name,
                        "bin": b,
                        "lower": edges[b],
                        "upper": edges[b + 1],
                        "count": int(inside.sum()),
                        "mean_probability": float(p[inside].mean()),
                        "observed_frequency": float(y[inside].mean()),
                    }
                )
    columns = ["group", "bin", "lower", "upper", "count", "mean_probability", "observed_frequency"]
    return pd.DataFrame(rows, columns=columns)


def calibration_error(table: pd.DataFrame) -> pd.Series:
    """Expected calibration error per group of a ``reliability`` table (count-weighted |gap|)."""
    gap = (table["mean_probability"] - table["observed_frequency"]).abs() * table["count"]
    return gap.groupby(table["group"]).sum() / table.groupby("group")["count"].sum()
