"""Failure patterns read back from a report written by write_report, against direct loop computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from capnet.data import Records
from capnet.engine.evaluate import write_report
from capnet.failures import EvalScores, calibration_error, confusions, load_scores, pr_curves, reliability

NAMES = ["person", "car", "dog", "zebra", "kite"]
TRAIN_COUNTS = [500, 300, 40, 5, 3]  # head, head, medium, tail, tail
GROUPS = ["head", "head", "medium", "tail", "tail"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """12 images: random labels with every class present at least twice, probabilities with ties."""
    rng = np.random.default_rng(0)
    labels = (rng.random((12, 5)) < 0.4).astype(int)
    labels[:2] = 1
    probs = np.round(rng.random((12, 5)), 1) * 0.9 + 0.025  # eleven values: many ties, none on a bin edge
    logits = np.log(probs / (1 - probs))
    records = Records(NAMES, [f"im{i}" for i in range(12)], [f"/x/im{i}.jpg" for i in range(12)], labels)
    per_class = [
        {"class": n, "train_count": t, "group": g, "test_positives": int(labels[:, c].sum())}
        for c, (n, t, g) in enumerate(zip(NAMES, TRAIN_COUNTS, GROUPS))
    ]
    out = tmp_path_factory.mktemp("report")
    write_report({"class_names": NAMES, "per_class": per_class}, logits, records, out)
    return out, probs, labels


def direct_confusions(probs, labels, c, k, kind):
    n = len(probs)
    if kind == "negatives":
        pool = sorted((i for i in range(n) if labels[i, c] == 0), key=lambda i: (-probs[i, c], i))
    else:
        pool = sorted((i for i in range(n) if labels[i, c] == 1), key=lambda i: (probs[i, c], i))
    chosen = pool[:k]
    counts = {NAMES[j]: sum(labels[i, j] for i in chosen) for j in range(len(NAMES)) if j != c}
    return len(chosen), {name: v for name, v in counts.items() if v > 0}


def test_load_scores_round_trip(report):
    folder, probs, labels = report
    scores = load_scores(folder)
    assert scores.class_names == NAMES and scores.groups == GROUPS
    np.testing.assert_allclose(scores.probs, probs, atol=1e-9)
    assert (scores.labels == labels).all() and scores.image_ids[3] == "im3"
    assert scores.classes_in("tail") == [3, 4]


@pytest.mark.parametrize("k", [1, 3, 20])
def test_confusion_counts_equal_a_direct_computation(report, k):
    folder, probs, labels = report
    table = confusions(load_scores(folder), k, top=None)
    for c, name in enumerate(NAMES):
        for kind in ("negatives", "positives"):
            images, expected = direct_confusions(probs, labels, c, k, kind)
            rows = table[(table["class"] == name) & (table["kind"] == kind)]
            assert dict(zip(rows["other"], rows["count"])) == expected
            assert (rows["images"] == images).all()
            np.testing.assert_allclose(rows["share"], rows["count"] / images)
            assert list(rows["count"]) == sorted(rows["count"], reverse=True)


def test_confusions_filtered_to_the_tail_and_cut_to_top(report):
    folder, probs, labels = report
    table = confusions(load_scores(folder), 3, group="tail", top=1)
    assert set(table["class"]) == {"zebra", "kite"} and set(table["group"]) == {"tail"}
    assert table.groupby(["class", "kind"]).size().max() == 1
    for _, row in table.iterrows():
        _, expected = direct_confusions(probs, labels, NAMES.index(row["class"]), 3, row["kind"])
        best = max(expected.values())
        assert row["count"] == best and row["other"] == min(n for n, v in expected.items() if v == best)


def test_pr_curves_match_the_report_aps(report):
    folder, probs, labels = report
    curves = pr_curves(load_scores(folder))
    for c, name in enumerate(NAMES):
        rows = curves[curves["class"] == name]
        assert rows["ap"].iloc[0] == pytest.approx(average_precision_score(labels[:, c], probs[:, c]))
        # The last point is (recall 0, precision 1) and the first has full recall.
        assert rows["recall"].iloc[0] == 1.0 and rows["recall"].iloc[-1] == 0.0
        assert np.isnan(rows["threshold"].iloc[-1])
    tail = pr_curves(load_scores(folder), group="tail")
    assert set(tail["class"]) == {"zebra", "kite"}


@pytest.mark.parametrize("bins", [1, 4, 10])
def test_reliability_against_loops(report, bins):
    folder, probs, labels = report
    table = reliability(load_scores(folder), bins)
    for group in ("head", "medium", "tail"):
        classes = [c for c, g in enumerate(GROUPS) if g == group]
        pairs = [(probs[i, c], labels[i, c]) for i in range(len(probs)) for c in classes]
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            inside = [(p, y) for p, y in pairs if lo <= p < hi or (b == bins - 1 and p == 1.0)]
            row = table[(table["group"] == group) & (table["bin"] == b)]
            if not inside:
                assert row.empty
                continue
            assert int(row["count"].iloc[0]) == len(inside)
            assert row["mean_probability"].iloc[0] == pytest.approx(np.mean([p for p, _ in inside]))
            assert row["observed_frequency"].iloc[0] == pytest.approx(np.mean([y for _, y in inside]))
    ece = calibration_error(table)
    tail = table[table["group"] == "tail"]
    gap = (tail["mean_probability"] - tail["observed_frequency"]).abs()
    assert ece["tail"] == pytest.approx(float((gap * tail["count"]).sum() / tail["count"].sum()))
    only_tail = reliability(load_scores(folder), bins, group="tail")
    pd.testing.assert_frame_equal(only_tail.reset_index(drop=True), tail.reset_index(drop=True))


def test_a_folder_without_a_report_is_one_readable_error(tmp_path):
    with pytest.raises(ValueError, match="report.json is missing"):
        load_scores(tmp_path)
    (tmp_path / "report.json").write_text('{"class_names": ["a"], "per_class": []}')
    (tmp_path / "scores.csv").write_text("image_id,path,p:a,y:a\n1,x.jpg,0.5,1\n")
    with pytest.raises(ValueError, match="disagree about the classes"):
        load_scores(tmp_path)


def test_an_unknown_group_is_refused(report):
    with pytest.raises(ValueError, match="unknown class group"):
        confusions(load_scores(report[0]), group="rare")


def test_reliability_bin_edges():
    """Bins are closed on the left, the last one on both sides: 0.5 falls in [0.5, 1], 1.0 too."""
    probs = np.array([[0.0], [0.25], [0.5], [1.0]])
    scores = EvalScores(["a"], ["tail"], np.array([1]), list("wxyz"), probs, np.array([[0], [0], [1], [1]]))
    table = reliability(scores, 2)
    assert list(table["count"]) == [2, 2]
    assert list(table["observed_frequency"]) == [0.0, 1.0]
    assert list(table["mean_probability"]) == [0.125, 0.75]
