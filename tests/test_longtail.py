"""Tests for capnet.data.longtail: the Pareto long-tailed subset builder (VOC-LT construction)."""

import json
import math
import pickle

import numpy as np
import pytest
from scipy.stats import spearmanr

from capnet.data.longtail import (
    build_longtail,
    cooccurrence_scores,
    longtail_summary,
    pareto_reference_counts,
)
from capnet.metrics import class_groups
from tests.common import VOC_CLASSES, official_file

POOL = ("voc2012-pool", "terse_gt_2012.pkl")
OFFICIAL = ("voc-lt", "class_freq.pkl")
OFFICIAL_SIZE = 1142


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), independent of scipy."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _synthetic(seed: int = 0, n: int = 600, c: int = 8) -> np.ndarray:
    """Pool with skewed class frequencies and co-occurrence; every image has at least one label."""
    rng = np.random.default_rng(seed)
    p = np.linspace(0.5, 0.08, c)
    y = (rng.random((n, c)) < p).astype(np.int64)
    empty = y.sum(1) == 0
    y[empty, rng.integers(0, c, size=int(empty.sum()))] = 1
    return y


# ---------------------------------------------------------------- reference counts


def test_reference_counts_match_independent_formula():
    b, mx, mn, c = 6.0, 800, 1, 20
    q_hi = (1 - 0.99) ** (-1 / b)  # Pareto(b) quantile 0.99; quantile 0 is x = 1
    xs = [1 + (q_hi - 1) * k / (c - 1) for k in range(c)]
    expected = [int(b / x ** (b + 1) * (mx - mn) / b + mn) for x in xs]
    got = pareto_reference_counts(c, mx, mn, b)
    assert got.tolist() == expected
    assert got[0] == mx
    assert got.tolist()[:5] == [800, 529, 359, 248, 175]
    assert got.tolist()[-3:] == [6, 5, 4]


@pytest.mark.parametrize(
    "c,mx,mn,b", [(20, 800, 1, 6.0), (80, 1200, 1, 6.0), (5, 50, 3, 2.5), (1, 10, 0, 3.7), (12, 7, 7, 6.0)]
)
def test_reference_counts_non_increasing_start_at_max(c, mx, mn, b):
    ref = pareto_reference_counts(c, mx, mn, b)
    assert ref.shape == (c,) and ref.dtype == np.int64
    assert ref[0] == mx
    assert np.all(np.diff(ref) <= 0)
    assert np.all(ref >= mn)


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 10), "num_classes"),
        ((5, 3, 4), "max_per_class"),
        ((5, 10, -1), "min_per_class"),
        ((5, 10.5), "integer"),
        ((5, 10, 1, 0.0), "pareto_shape"),
        ((5, 10, 1, math.inf), "pareto_shape"),
    ],
)
def test_reference_counts_validation(args, match):
    with pytest.raises(ValueError, match=match):
        pareto_reference_counts(*args)


# ---------------------------------------------------------------- builder on synthetic pools


def test_cooccurrence_scores_are_condition_prob_column_sums():
    y = _synthetic()
    co = (y.T @ y).astype(float)
    cond = co / np.diag(co)[:, None]  # P(column | row)
    np.testing.assert_allclose(cooccurrence_scores(y), cond.sum(0))
    # a class absent from the pool contributes nothing and scores 0
    y2 = y.copy()
    y2[:, 3] = 0
    s = cooccurrence_scores(y2)
    assert s[3] == 0 and np.all(np.isfinite(s))


def test_same_seed_same_selection_different_seed_different():
    y = _synthetic()
    a = build_longtail(y, 120, seed=0)
    b = build_longtail(y.astype(bool), 120, seed=0)
    c = build_longtail(y, 120, seed=1)
    assert a.tolist() == b.tolist()
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert a.tolist() != c.tolist()


def test_last_class_in_order_hits_its_target_and_is_long_tailed():
    y = _synthetic()
    ref = pareto_reference_counts(y.shape[1], 120, 1, 6.0)
    order = np.argsort(-cooccurrence_scores(y), kind="stable")
    idx = build_longtail(y, 120, seed=3)
    counts = y[idx].sum(0)
    assert counts[order[-1]] == ref[-1]
    assert counts.max() <= y.sum(0).max()
    assert counts[order[0]] > 5 * counts[order[-1]]


def test_targets_capped_by_availability():
    # a pool with few images per class: the walk takes what exists instead of failing
    y = np.eye(4, dtype=int).repeat(3, axis=0)
    idx = build_longtail(y, 100, seed=0)
    assert y[idx].sum(0).max() == 3


def test_min_zero_can_drop_a_class():
    y = _synthetic(c=5)
    assert pareto_reference_counts(5, 40, 0, 6.0)[-1] == 0
    idx = build_longtail(y, 40, min_per_class=0, pareto_shape=6.0, seed=0)
    last = np.argsort(-cooccurrence_scores(y), kind="stable")[-1]
    assert idx.size > 0 and y[idx, last].sum() == 0


@pytest.mark.parametrize(
    "labels,kwargs,match",
    [
        (np.zeros(5), {}, "2-D"),
        (np.zeros((5, 0)), {}, "at least one class"),
        (np.full((4, 3), 2), {}, "0 and 1"),
        (np.array([["a", "b"]]), {}, "numeric"),
        (np.zeros((4, 3)), {"min_per_class": 5}, "max_per_class"),
        (np.zeros((4, 3)), {"seed": -1}, "seed"),
        (np.zeros((4, 3)), {"seed": 1.5}, "seed"),
    ],
)
def test_build_validation(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_longtail(labels, 3, **kwargs)


def test_summary_is_json_serialisable_and_consistent():
    y = _synthetic(c=4)
    y = np.vstack([y[:150], np.zeros((2, 4), dtype=int)])
    s = longtail_summary(y, ["a", "b", "c", "d"])
    json.dumps(s, allow_nan=False)
    assert s["num_images"] == 152 and s["num_classes"] == 4
    assert s["class_counts"] == y.sum(0).tolist()
    assert s["groups"] == class_groups(y.sum(0))
    assert sum(s["group_sizes"].values()) == 4
    assert s["num_labels"] == int(y.sum())
    assert s["labels_per_image"] == pytest.approx(y.sum() / 152)
    assert s["images_without_labels"] == 2
    assert longtail_summary(np.zeros((0, 2)), ["x", "y"])["labels_per_image"] is None
    with pytest.raises(ValueError, match="class_names"):
        longtail_summary(y, ["a", "b"])


# ---------------------------------------------------------------- real VOC2012 pool vs official VOC-LT


@pytest.fixture(scope="module")
def voc_real():
    with open(official_file(*POOL), "rb") as f:  # trusted shared file (tests only; library never unpickles)
        pool = pickle.load(f)
    with open(official_file(*OFFICIAL), "rb") as f:
        official = pickle.load(f)
    labels = np.asarray(pool["gt_labels"], dtype=np.int64)
    idx = build_longtail(labels, 800, min_per_class=1, pareto_shape=6.0, seed=0)
    counts = labels[idx].sum(0)
    off = np.asarray(official["class_freq"], dtype=np.int64)
    ours_g, off_g = class_groups(counts), class_groups(off)
    result = {
        "labels": labels,
        "idx": idx,
        "counts": counts,
        "official": off,
        "spearman": _spearman(counts, off),
        "size": int(idx.size),
        "group_agreement": float(np.mean([a == b for a, b in zip(ours_g, off_g)])),
    }
    print(
        f"\nVOC-LT rebuild (max 800, min 1, shape 6, seed 0): spearman={result['spearman']:.4f} "
        f"size={result['size']} (official {OFFICIAL_SIZE}) group agreement={result['group_agreement']:.2f}"
        f"\n  ours     {counts.tolist()}\n  official {off.tolist()}"
    )
    return result


def test_voc_rebuild_matches_official_counts(voc_real):
    assert voc_real["spearman"] >= 0.98
    assert spearmanr(voc_real["counts"], voc_real["official"])[0] == pytest.approx(voc_real["spearman"])


def test_voc_rebuild_size(voc_real):
    assert abs(voc_real["size"] - OFFICIAL_SIZE) <= 0.05 * OFFICIAL_SIZE


def test_voc_rebuild_groups(voc_real):
    assert voc_real["group_agreement"] >= 0.9


def test_voc_order_matches_official_condition_prob(voc_real):
    # our ranking score computed on the pool orders classes as the official VOC-LT counts do
    scores = cooccurrence_scores(voc_real["labels"])
    assert _spearman(scores, voc_real["official"]) >= 0.99


def test_voc_summary(voc_real):
    s = longtail_summary(voc_real["labels"][voc_real["idx"]], VOC_CLASSES)
    json.dumps(s, allow_nan=False)
    assert s["num_images"] == voc_real["size"]
    assert s["class_counts"] == voc_real["counts"].tolist()
    assert 1.9 <= s["labels_per_image"] <= 2.2  # official VOC-LT: 2.05
    assert s["images_without_labels"] == 0
