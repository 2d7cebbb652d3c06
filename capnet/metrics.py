"""Evaluation metrics for long-tailed multi-label recognition: per-class AP, head/medium/tail mAP, F1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score

__all__ = [
    "GROUPS",
    "HEAD_MIN",
    "TAIL_MAX",
    "class_groups",
    "f1_at_threshold",
    "lt_map",
]

HEAD_MIN = 100
TAIL_MAX = 20
GROUPS = ("head", "medium", "tail")


def _to_numpy(x: Any) -> np.ndarray:
    """Tensors are detached and kept at >= fp32 precision: lowering precision creates ties that change AP."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        t = x.detach()
        if not (t.is_floating_point() and t.element_size() >= 8):
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(x)


def _scores_targets(scores: Any, targets: Any, score_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Shared checks so that a wrong input fails loudly instead of giving a plausible-looking number."""
    s = _to_numpy(scores)
    y = _to_numpy(targets)
    if s.ndim != 2:
        raise ValueError(f"{score_name} must be 2-D (N x C), got shape {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"targets shape {y.shape} does not match {score_name} shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"{score_name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)  # float32 -> float64 is exact, so no new ties
    if not np.isfinite(s).all():
        raise ValueError(f"{score_name} contain NaN or inf")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("targets must contain only 0 and 1")
    return s, y.astype(np.int64)


def class_groups(
    class_freq: Sequence[int] | np.ndarray | Any, head_min: int = HEAD_MIN, tail_max: int = TAIL_MAX
) -> list[str]:
    """Group by TRAINING frequency, the usual long-tailed protocol (head >= 100, tail < 20 images)."""
    if tail_max > head_min:
        raise ValueError(f"tail_max ({tail_max}) must not exceed head_min ({head_min})")
    freq = _to_numpy(class_freq)
    if freq.ndim != 1:
        raise ValueError(f"class_freq must be 1-D, got shape {freq.shape}")
    groups = []
    for n in freq.tolist():
        if n >= head_min:
            groups.append("head")
        elif n >= tail_max:
            groups.append("medium")
        else:
            groups.append("tail")
    return groups


def lt_map(
    scores: Any,
    targets: Any,
    class_freq: Sequence[int] | np.ndarray | Any,
    *,
    head_min: int = HEAD_MIN,
    tail_max: int = TAIL_MAX,
) -> dict[str, Any]:
    """mAP overall and per frequency group.

    Scores must be per-class independent (logits or sigmoids): AP is rank-based per class, so any
    monotone transform is harmless, but a softmax across classes mixes classes and changes the ranking.
    Classes without a positive test image have undefined AP; they are excluded and reported in `missing`.
    """
    s, y = _scores_targets(scores, targets, "scores")
    n_classes = s.shape[1]
    freq = _to_numpy(class_freq)
    if freq.ndim != 1 or freq.shape[0] != n_classes:
        raise ValueError(f"class_freq must have length {n_classes} (one per class), got shape {freq.shape}")
    groups = class_groups(freq, head_min=head_min, tail_max=tail_max)

    per_class: list[float] = []
    missing: list[int] = []
    for c in range(n_classes):
        if y[:, c].sum() == 0:
            per_class.append(math.nan)
            missing.append(c)
        else:
            per_class.append(float(average_precision_score(y[:, c], s[:, c])))

    def _mean(idx: list[int]) -> float:
        vals = [per_class[c] for c in idx if not math.isnan(per_class[c])]
        return float(np.mean(vals)) if vals else math.nan

    result: dict[str, Any] = {"total": _mean(list(range(n_classes)))}
    for g in GROUPS:
        result[g] = _mean([c for c in range(n_classes) if groups[c] == g])
    result["per_class"] = per_class
    result["groups"] = groups
    result["group_sizes"] = {g: groups.count(g) for g in GROUPS}
    result["missing"] = missing
    return result


def f1_at_threshold(probs: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """F1 of hard predictions (prob >= threshold).

    Macro F1 skips classes with neither a positive nor a prediction: their F1 is 0/0 and counting it
    as 0 would punish a test set for lacking a class. Macro is nan when no class qualifies.
    """
    p, y = _scores_targets(probs, targets, "probs")
    pred = (p >= threshold).astype(np.int64)
    micro = float(f1_score(y, pred, average="micro", zero_division=0))
    labels = np.flatnonzero((y.sum(axis=0) > 0) | (pred.sum(axis=0) > 0))
    if labels.size:
        macro = float(f1_score(y, pred, average="macro", labels=labels, zero_division=0))
    else:
        macro = math.nan
    return {"micro_f1": micro, "macro_f1": macro}
