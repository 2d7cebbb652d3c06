"""Tests for capnet.metrics, checked against independent computations (hand formulas and sklearn)."""

import math
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from capnet.metrics import GROUPS, HEAD_MIN, TAIL_MAX, class_groups, f1_at_threshold, lt_map


def _ap_by_formula(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = mean over positives (ranked by descending score) of precision at their rank; no ties assumed."""
    order = np.argsort(-scores, kind="stable")
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if labels[i] == 1:
            hits += 1
            total += hits / rank
    return total / labels.sum()


def _random_case(seed: int, n: int = 60, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[0] = 1  # every class has at least one positive
    scores = rng.normal(size=(n, c)) + 1.5 * targets
    return scores, targets


# ---------------------------------------------------------------- AP values


def test_ap_hand_example_exact_formula():
    labels = np.array([0, 1, 0, 1, 1, 0, 0])
    scores = np.array([0.6, 0.9, 0.8, 0.7, 0.3, 0.5, 0.1])  # no ties
    # ranking: .9(+) .8(-) .7(+) .6(-) .5(-) .3(+) .1(-) -> precisions 1/1, 2/3, 3/6
    expected = (1.0 + 2 / 3 + 3 / 6) / 3
    assert _ap_by_formula(scores, labels) == pytest.approx(expected)
    res = lt_map(scores[:, None], labels[:, None], [150])
    assert res["per_class"][0] == pytest.approx(expected, abs=1e-12)
    assert res["total"] == pytest.approx(expected, abs=1e-12)
    assert res["head"] == pytest.approx(expected, abs=1e-12)


def test_ap_matches_formula_and_sklearn_random():
    scores, targets = _random_case(0)
    res = lt_map(scores, targets, [150] * scores.shape[1])
    for c in range(scores.shape[1]):
        ref_sk = average_precision_score(targets[:, c], scores[:, c])
        ref_formula = _ap_by_formula(scores[:, c], targets[:, c])  # continuous scores: no ties
        assert res["per_class"][c] == pytest.approx(ref_sk, abs=1e-12)
        assert res["per_class"][c] == pytest.approx(ref_formula, abs=1e-12)
    assert res["total"] == pytest.approx(np.mean(res["per_class"]), abs=1e-12)


def test_ap_is_not_trivial():
    # a perfect ranking gives 1, a reversed one gives less: the metric can fail
    labels = np.array([1, 1, 0, 0])[:, None]
    good = np.array([4.0, 3.0, 2.0, 1.0])[:, None]
    assert lt_map(good, labels, [150])["total"] == pytest.approx(1.0)
    assert lt_map(-good, labels, [150])["total"] == pytest.approx((1 / 3 + 2 / 4) / 2)


# ---------------------------------------------------------------- groups


def test_group_means_match_numpy_and_missing_excluded():
    rng = np.random.default_rng(1)
    freq = [500, 100, 99, 50, 20, 19, 3, 0, 250, 7]
    n, c = 80, len(freq)
    targets = (rng.random((n, c)) < 0.35).astype(int)
    targets[:, 3] = 0  # medium class without test positives
    targets[:, 6] = 0  # tail class without test positives
    scores = rng.normal(size=(n, c)) + targets
    res = lt_map(scores, targets, freq)

    assert res["missing"] == [3, 6]
    assert math.isnan(res["per_class"][3]) and math.isnan(res["per_class"][6])
    assert len(res["per_class"]) == c
    groups = ["head", "head", "medium", "medium", "medium", "tail", "tail", "tail", "head", "tail"]
    assert res["groups"] == groups
    assert res["group_sizes"] == {"head": 3, "medium": 3, "tail": 4}

    ap = {k: average_precision_score(targets[:, k], scores[:, k]) for k in range(c) if k not in (3, 6)}
    for g in GROUPS:
        vals = [ap[k] for k in ap if groups[k] == g]
        assert res[g] == pytest.approx(np.mean(vals), abs=1e-12)
        assert 0.0 <= res[g] <= 1.0
    assert res["total"] == pytest.approx(np.mean(list(ap.values())), abs=1e-12)
    for k, v in ap.items():
        assert res["per_class"][k] == pytest.approx(v, abs=1e-12)


def test_group_without_classes_is_nan():
    scores, targets = _random_case(2, c=4)
    res = lt_map(scores, targets, [300, 200, 40, 60])  # no tail class
    assert math.isnan(res["tail"])
    assert res["group_sizes"]["tail"] == 0
    assert not math.isnan(res["head"]) and not math.isnan(res["medium"])


def test_group_whose_classes_are_all_missing_is_nan():
    scores, targets = _random_case(3, c=3)
    targets[:, 2] = 0
    res = lt_map(scores, targets, [300, 40, 5])
    assert res["missing"] == [2]
    assert res["group_sizes"]["tail"] == 1
    assert math.isnan(res["tail"])
    assert res["total"] == pytest.approx(np.nanmean(res["per_class"]), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "group"),
    [(1000, "head"), (100, "head"), (99, "medium"), (20, "medium"), (19, "tail"), (0, "tail")],
)
def test_class_group_boundaries(n, group):
    assert class_groups([n]) == [group]
    assert HEAD_MIN == 100 and TAIL_MAX == 20


def test_class_groups_custom_thresholds_and_bad_order():
    assert class_groups([10, 5, 4], head_min=10, tail_max=5) == ["head", "medium", "tail"]
    with pytest.raises(ValueError):
        class_groups([1, 2], head_min=10, tail_max=50)


# ---------------------------------------------------------------- input types and transforms


def test_accepts_torch_tensors():
    scores, targets = _random_case(4)
    freq = [150, 50, 5, 300, 20, 19, 100]
    ref = lt_map(scores, targets, freq)
    got = lt_map(torch.from_numpy(scores).float(), torch.from_numpy(targets), torch.tensor(freq))
    np.testing.assert_allclose(got["per_class"], ref["per_class"], atol=1e-6)
    for key in ("total", *GROUPS):
        assert got[key] == pytest.approx(ref[key], abs=1e-6)
    assert got["groups"] == ref["groups"]
    f1_ref = f1_at_threshold(1 / (1 + np.exp(-scores)), targets)
    f1_got = f1_at_threshold(torch.sigmoid(torch.from_numpy(scores)), torch.from_numpy(targets))
    assert f1_got == pytest.approx(f1_ref)


def test_float64_tensor_keeps_precision():
    # 1 + 1e-12 and 1 tie in fp32 (AP 0.5); kept in float64 the positive ranks first (AP 1)
    scores = torch.tensor([[1.0 + 1e-12], [1.0]], dtype=torch.float64)
    targets = torch.tensor([[1], [0]])
    assert lt_map(scores, targets, [150])["total"] == pytest.approx(1.0)
    assert lt_map(scores.float(), targets, [150])["total"] == pytest.approx(0.5)


def test_sigmoid_of_logits_gives_same_result():
    logits, targets = _random_case(5)
    freq = [150, 50, 5, 300, 20, 19, 100]
    a = lt_map(logits, targets, freq)
    b = lt_map(torch.sigmoid(torch.from_numpy(logits)), torch.from_numpy(targets), freq)
    np.testing.assert_allclose(a["per_class"], b["per_class"], atol=1e-12)
    assert a["total"] == pytest.approx(b["total"], abs=1e-12)


def test_softmax_across_classes_changes_map():
    # class 0 ranks image A above B by its own logit, but softmax divides by A's huge class-1 logit
    logits = np.array([[2.0, 10.0], [1.0, -10.0]])
    targets = np.array([[1, 1], [0, 0]])
    raw = lt_map(logits, targets, [150, 150])
    soft = lt_map(torch.softmax(torch.from_numpy(logits), dim=1), targets, [150, 150])
    assert raw["per_class"][0] == pytest.approx(1.0)
    assert soft["per_class"][0] == pytest.approx(0.5)
    assert soft["total"] != pytest.approx(raw["total"])


# ---------------------------------------------------------------- real LT splits


@pytest.mark.parametrize(
    ("key", "sizes"),
    [("voc_lt", {"head": 6, "medium": 6, "tail": 8}), ("coco_lt", {"head": 22, "medium": 33, "tail": 25})],
)
def test_real_lt_splits(key, sizes, lt_summary):
    info = lt_summary[key]
    freq = info["train_class_freq"]
    groups = class_groups(freq)
    for g, file_g in (("head", "head"), ("medium", "middle"), ("tail", "tail")):
        assert [i for i, x in enumerate(groups) if x == g] == sorted(info["split"][file_g])
    n_classes = len(freq)
    rng = np.random.default_rng(6)
    targets = (rng.random((30, n_classes)) < 0.5).astype(int)
    res = lt_map(rng.normal(size=(30, n_classes)), targets, freq)
    assert res["group_sizes"] == sizes


# ---------------------------------------------------------------- F1


def test_f1_hand_case():
    targets = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]])
    probs = np.array([[0.9, 0.6, 0.6, 0.1], [0.2, 0.5, 0.1, 0.1], [0.7, 0.8, 0.2, 0.3]])
    # preds (>= 0.5): class0 tp2 -> F1 1; class1 tp2 fp1 -> 0.8; class2 fp1 -> 0; class3 nothing -> skipped
    res = f1_at_threshold(probs, targets)
    assert res["macro_f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert res["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 0))
    # higher threshold removes the class-2 false positive and the class-1 prediction at 0.5
    res = f1_at_threshold(probs, targets, threshold=0.65)
    assert res["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_f1_matches_sklearn_random():
    rng = np.random.default_rng(7)
    n, c = 50, 8
    targets = (rng.random((n, c)) < 0.3).astype(int)
    probs = np.clip(rng.random((n, c)) * 0.7 + 0.4 * targets, 0, 1)
    targets[:, 5] = 0
    probs[:, 5] = 0.1  # no positive and no prediction: excluded from macro
    res = f1_at_threshold(probs, targets, threshold=0.5)
    pred = (probs >= 0.5).astype(int)
    assert res["micro_f1"] == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0))
    keep = [k for k in range(c) if k != 5]
    per_class = [f1_score(targets[:, k], pred[:, k], zero_division=0) for k in keep]
    assert res["macro_f1"] == pytest.approx(np.mean(per_class))
    all_classes = f1_score(targets, pred, average="macro", zero_division=0)
    assert res["macro_f1"] != pytest.approx(all_classes)


def test_f1_no_qualifying_class_gives_nan_macro():
    res = f1_at_threshold(np.zeros((3, 2)), np.zeros((3, 2), dtype=int))
    assert math.isnan(res["macro_f1"])
    assert res["micro_f1"] == 0.0


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("scores", "targets", "freq"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), [1, 2, 3]),  # shape mismatch
        (np.zeros((4, 3)), np.zeros((5, 3)), [1, 2, 3]),  # row mismatch
        (np.zeros(4), np.zeros(4), [1]),  # not 2-D
        (np.zeros((4, 3)), np.ones((4, 3)), [1, 2]),  # class_freq too short
        (np.zeros((4, 3)), np.ones((4, 3)), [[1, 2, 3]]),  # class_freq not 1-D
        (np.array([[0.1, np.nan], [0.2, 0.3]]), np.ones((2, 2)), [1, 2]),  # NaN score
        (np.array([[0.1, np.inf], [0.2, 0.3]]), np.ones((2, 2)), [1, 2]),  # inf score
        (np.zeros((2, 2)), np.array([[2, 0], [1, 0]]), [1, 2]),  # non-binary targets
    ],
)
def test_lt_map_value_errors(scores, targets, freq):
    with pytest.raises(ValueError):
        lt_map(scores, targets, freq)


def test_f1_value_errors():
    with pytest.raises(ValueError):
        f1_at_threshold(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        f1_at_threshold(np.array([[np.nan, 0.1]]), np.array([[1, 0]]))
    with pytest.raises(ValueError):
        f1_at_threshold(torch.full((2, 2), float("inf")), torch.zeros(2, 2))


# ---------------------------------------------------------------- edges (found by mutation testing)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lt_map(np.zeros(4), np.zeros(4), [1]), "scores must be 2-D (N x C), got shape (4,)"),
        (lambda: f1_at_threshold(np.zeros(4), np.zeros(4)), "probs must be 2-D (N x C), got shape (4,)"),
        (
            lambda: lt_map(np.zeros((4, 3)), np.zeros((4, 2)), [1, 2, 3]),
            "targets shape (4, 2) does not match scores shape (4, 3)",
        ),
        (
            lambda: f1_at_threshold(np.zeros((4, 3)), np.zeros((4, 2))),
            "targets shape (4, 2) does not match probs shape (4, 3)",
        ),
        (
            lambda: lt_map(np.array([["a", "b"]]), np.zeros((1, 2)), [1, 2]),
            "scores must be real numbers, got dtype <U1",
        ),
        (
            lambda: f1_at_threshold(np.ones((1, 2), dtype=complex), np.zeros((1, 2))),
            "probs must be real numbers, got dtype complex128",
        ),
        (lambda: lt_map(np.array([[0.1, np.nan]]), np.ones((1, 2)), [1, 2]), "scores contain NaN or inf"),
        (lambda: f1_at_threshold(np.array([[np.inf, 0.1]]), np.ones((1, 2))), "probs contain NaN or inf"),
        (
            lambda: lt_map(np.zeros((2, 2)), np.array([[2, 0], [1, 0]]), [1, 2]),
            "targets must contain only 0 and 1",
        ),
        (
            lambda: lt_map(np.zeros((4, 3)), np.ones((4, 3)), [1, 2]),
            "class_freq must have length 3 (one per class), got shape (2,)",
        ),
        (lambda: class_groups([[1, 2]]), "class_freq must be 1-D, got shape (1, 2)"),
        (
            lambda: class_groups([1, 2], head_min=10, tail_max=50),
            "tail_max (50) must not exceed head_min (10)",
        ),
    ],
)
def test_errors_name_the_input_and_its_shape(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()


def test_equal_thresholds_leave_no_medium_group():
    assert class_groups([5, 20, 50], head_min=20, tail_max=20) == ["tail", "head", "head"]


def test_f1_a_class_with_one_unpredicted_positive_counts_as_zero():
    targets = np.array([[1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.1]])  # class 0: one positive, never predicted
    res = f1_at_threshold(probs, targets)
    assert res["macro_f1"] == pytest.approx((0.0 + 1.0) / 2)
    assert res["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_f1_without_any_positive_or_prediction_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's UndefinedMetricWarning would reach every report
        res = f1_at_threshold(np.zeros((3, 2)), np.zeros((3, 2), dtype=int))
        assert res["micro_f1"] == 0.0
        f1_at_threshold(np.array([[0.9, 0.1]]), np.array([[0, 1]]))


def test_tensors_that_need_grad_or_half_precision_are_read():
    scores, targets = _random_case(6)
    freq = [150, 50, 5, 300, 20, 19, 100]
    logits = torch.from_numpy(scores).float().requires_grad_(True)  # straight from a model
    ref = lt_map(logits.detach().numpy(), targets, freq)
    assert lt_map(logits, torch.from_numpy(targets), freq)["per_class"] == ref["per_class"]
    half = logits.detach().bfloat16()  # read at fp32 or better: no ties from a lower precision
    assert (
        lt_map(half, targets, freq)["per_class"] == lt_map(half.float().numpy(), targets, freq)["per_class"]
    )


def test_lt_map_uses_its_own_group_thresholds():
    scores, targets = _random_case(7, c=3)
    res = lt_map(scores, targets, [50, 18, 10], head_min=40, tail_max=15)  # 50 and 18: not by default
    assert res["groups"] == ["head", "medium", "tail"]
    assert res["head"] == pytest.approx(res["per_class"][0])
    assert res["tail"] == pytest.approx(res["per_class"][2])


def test_an_empty_group_is_nan_without_a_warning():
    scores, targets = _random_case(2, c=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would reach every report
        res = lt_map(scores, targets, [300, 200, 40, 60])
    assert math.isnan(res["tail"])
