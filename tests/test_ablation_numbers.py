"""The ablation's reported mAP values are recomputed from the scores it wrote, with sklearn.

tests/test_ablation.py checks the ablation's structure; this checks its numbers. The labels are read
from the written CSV files directly and the head/medium/tail groups come from the protocol's thresholds
(head: at least 100 training images, tail: fewer than 20), not from capnet.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from sklearn.metrics import average_precision_score

from capnet.world import ablation
from capnet.world.scenes import SCENE_CLASSES

ROWS = ["zero-shot", "+ GCN, text-embedding graph", "  GCN, co-occurrence graph"]
SLUGS = {
    "zero-shot": "zero-shot",
    "+ GCN, text-embedding graph": "GCN-text-embedding-graph",
    "  GCN, co-occurrence graph": "GCN-co-occurrence-graph",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    torch.manual_seed(0)
    weights = tmp / "synth.safetensors"
    clip = open_clip.create_model("capnet-synth", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    payload = ablation.run_ablation(
        tmp / "out", seeds=(0, 1), epochs=1, weights=weights, rows=ROWS,
        data_options={"pool_size": 800, "max_per_class": 80, "test_size": 40},
    )  # fmt: skip
    return tmp / "out", payload


def _label_matrix(csv_path) -> np.ndarray:
    """One row per image, one column per scene class, from the 'path,labels' file (labels ';'-joined)."""
    frame = pd.read_csv(csv_path, keep_default_na=False)
    index = {name: i for i, name in enumerate(SCENE_CLASSES)}
    y = np.zeros((len(frame), len(SCENE_CLASSES)), dtype=int)
    for row, labels in enumerate(frame["labels"]):
        for name in filter(None, labels.split(";")):
            y[row, index[name]] = 1
    return y


def _expected(scores_csv, train_counts: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    frame = pd.read_csv(scores_csv)
    probs = frame[[f"p:{n}" for n in SCENE_CLASSES]].to_numpy(np.float64)
    truth = frame[[f"y:{n}" for n in SCENE_CLASSES]].to_numpy(int)
    np.testing.assert_array_equal(truth, test_labels)  # the written truth is the test set's
    ap = {
        c: average_precision_score(truth[:, c], probs[:, c])
        for c in range(truth.shape[1])
        if truth[:, c].any()
    }
    group = np.where(train_counts >= 100, "head", np.where(train_counts >= 20, "medium", "tail"))
    expected = {"total": float(np.mean(list(ap.values())))}
    for g in ("head", "medium", "tail"):
        values = [v for c, v in ap.items() if group[c] == g]
        expected[g] = float(np.mean(values)) if values else float("nan")
    expected["per_class"] = [ap.get(c, float("nan")) for c in range(truth.shape[1])]
    return expected


@pytest.mark.parametrize("row", ROWS)
def test_first_seed_map_equals_sklearn_on_the_written_scores(run, row):
    out, payload = run
    train_counts = _label_matrix(out / "synth-lt" / "train" / "labels.csv").sum(axis=0)
    test_labels = _label_matrix(out / "synth-lt" / "test" / "labels.csv")
    reports = out / "reports" / SLUGS[row]
    expected = _expected(reports / "scores.csv", train_counts, test_labels)
    report = json.loads((reports / "report.json").read_text())
    saved = json.loads((out / "ablation.json").read_text())
    for g in ("total", "head", "medium", "tail"):
        reported = payload["table"][row][g]["runs"][0]
        assert reported == pytest.approx(expected[g], rel=1e-9, nan_ok=True), (row, g)
        assert saved["table"][row][g]["runs"][0] == pytest.approx(expected[g], rel=1e-9, nan_ok=True)
        assert report["results"]["single"][g] == pytest.approx(expected[g], rel=1e-9, nan_ok=True)
    per_class = [entry["ap_single"] for entry in report["per_class"]]
    per_class = [float("nan") if v is None else v for v in per_class]
    np.testing.assert_allclose(per_class, expected["per_class"], rtol=1e-9)
    assert [entry["train_count"] for entry in report["per_class"]] == train_counts.tolist()


def test_mean_and_std_are_over_the_seeds_runs(run):
    _, payload = run
    for row in ROWS:
        for g in ("total", "head", "medium", "tail"):
            cell = payload["table"][row][g]
            runs = np.array(cell["runs"], dtype=float)
            assert len(runs) == (1 if row == "zero-shot" else 2)
            assert cell["mean"] == pytest.approx(runs.mean(), rel=1e-12, nan_ok=True)
            assert cell["std"] == pytest.approx(
                np.sqrt(np.mean((runs - runs.mean()) ** 2)), abs=1e-15, nan_ok=True
            )


def test_markdown_table_shows_the_table_in_percent(run):
    out, payload = run
    table = (out / "ablation.md").read_text()
    for row in ROWS:
        cells = [payload["table"][row][g] for g in ("total", "head", "medium", "tail")]
        text = " | ".join(f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in cells)
        assert f"| {row.strip()} | {text} |" in table
