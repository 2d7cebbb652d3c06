"""Synth-LT is long-tailed in the VOC-LT sense, and the ablation command writes its table and reports."""

from __future__ import annotations

import json

import open_clip
import torch
from safetensors.torch import save_file
from scipy.stats import spearmanr

from capnet.data import read_csv
from capnet.engine.trainer import split_validation
from capnet.world import ablation
from capnet.world.scenes import SCENE_CLASSES, natural_probs


def test_synth_lt_has_head_medium_and_tail_classes(tmp_path):
    summary = ablation.build_synth_lt(tmp_path, pool_size=3000, max_per_class=300, test_size=40)
    train = read_csv(tmp_path / "train" / "labels.csv", tmp_path / "train", list(SCENE_CLASSES))
    assert summary["class_counts"] == train.class_freq.tolist()
    sizes = summary["group_sizes"]
    assert sizes["head"] >= 1 and sizes["medium"] >= 1 and sizes["tail"] >= 5, sizes
    test = read_csv(tmp_path / "test" / "labels.csv", tmp_path / "test", list(SCENE_CLASSES))
    assert len(test) == 40 == summary["test_size"]
    # The ablation's validation split (carved from train only) has positives of every class.
    fit, val = split_validation(train, 0.1, 0)
    assert (val.class_freq >= 1).all() and len(fit) + len(val) == len(train)
    assert not set(fit.paths) & set(val.paths)
    # The test set follows the world's natural (skewed) distribution, not a balanced one: its class
    # frequencies rank like the pool's Zipf probabilities.
    natural = ablation.build_synth_lt(tmp_path / "big", pool_size=50, max_per_class=10, test_size=1000)
    big = read_csv(tmp_path / "big" / "test" / "labels.csv", tmp_path / "big" / "test", list(SCENE_CLASSES))
    assert natural["test_size"] == 1000
    rho = spearmanr(big.class_freq, natural_probs(0)).statistic
    assert rho > 0.8, rho
    assert big.class_freq.max() > 5 * max(big.class_freq.min(), 1)


def test_ablation_writes_table_and_reports(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "synth.safetensors"
    clip = open_clip.create_model("capnet-synth", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    rows = ["zero-shot", "+ GCN, text-embedding graph", "  GCN, co-occurrence graph"]
    payload = ablation.run_ablation(
        tmp_path / "out", seeds=(0, 1), epochs=1, weights=weights, rows=rows,
        data_options={"pool_size": 800, "max_per_class": 80, "test_size": 40},
    )  # fmt: skip
    assert list(payload["table"]) == rows
    zero = payload["table"]["zero-shot"]["total"]
    assert len(zero["runs"]) == 1  # nothing trains: one seed is enough
    gcn = payload["table"]["+ GCN, text-embedding graph"]["total"]
    assert len(gcn["runs"]) == 2 and abs(gcn["mean"] - sum(gcn["runs"]) / 2) < 1e-12
    saved = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert saved["table"].keys() == payload["table"].keys()
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "| GCN, co-occurrence graph |" in table and "±" in table
    report = json.loads(
        (tmp_path / "out" / "reports" / "GCN-co-occurrence-graph" / "report.json").read_text()
    )
    assert report["name"] == "GCN, co-occurrence graph" and report["class_names"] == list(SCENE_CLASSES)
