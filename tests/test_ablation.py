"""Synth-LT is long-tailed in the VOC-LT sense, and the ablation command writes its table and reports."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from capnet.checkpoint import model_from_checkpoint, read_metadata
from capnet.data import read_csv
from capnet.engine.trainer import split_validation
from capnet.predict import predict_files
from capnet.world import ablation, probe
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


def _random_synth(path):
    torch.manual_seed(0)
    clip = open_clip.create_model("capnet-synth", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


TINY = {"pool_size": 800, "max_per_class": 80, "test_size": 60}


def test_recipe_is_chosen_on_validation_without_looking_at_the_test_set(tmp_path, monkeypatch):
    weights = _random_synth(tmp_path / "synth.safetensors")
    ablation.build_synth_lt(tmp_path / "data", **TINY)
    train = read_csv(
        tmp_path / "data" / "train" / "labels.csv", tmp_path / "data" / "train", list(SCENE_CLASSES)
    )

    def no_test(*args, **kwargs):
        raise AssertionError("the recipe choice looked at a test set")

    monkeypatch.setattr(ablation, "evaluate", no_test)
    base = ablation.base_config(tmp_path, weights, epochs=2)
    choice = ablation.select_recipe(base, train, tmp_path)
    scores = {name: kept["val_total"] for name, kept in choice["validation"].items()}
    assert list(scores) == [name for name, _ in ablation.RECIPES]
    assert choice["chosen"] == max(scores, key=scores.get)
    assert choice["change"] == dict(ablation.RECIPES)[choice["chosen"]]
    # Each recipe kept its best validation epoch, and the score is that epoch's validation mAP.
    for name, kept in choice["validation"].items():
        assert kept["rule"] == "best" and 1 <= kept["epoch"] <= 2, (name, kept)


def test_probe_keeps_its_best_validation_epoch_and_reports_its_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    y = (x[:, :5] + 0.8 * rng.normal(size=(300, 5)) > 0.6).astype(np.uint8)
    train, val = (x[:200], y[:200]), (x[200:], y[200:])
    freq = y[:200].sum(0)
    head, info = probe.train_probe(train, val, torch.nn.BCEWithLogitsLoss(), freq, epochs=6, lr=0.05)
    with torch.no_grad():
        scores = head(torch.from_numpy(val[0])).numpy()
    expected = np.mean(
        [average_precision_score(val[1][:, c], scores[:, c]) for c in range(5) if val[1][:, c].any()]
    )
    assert info["val_total"] == pytest.approx(expected, rel=1e-9)
    # Training for exactly the kept number of epochs gives the same probe: the best epoch is what is kept.
    again, _ = probe.train_probe(
        train, val, torch.nn.BCEWithLogitsLoss(), freq, epochs=info["epoch"], lr=0.05
    )
    torch.testing.assert_close(again.weight, head.weight, rtol=0, atol=0)
    _, choice = probe.select_probe(
        train, val, torch.nn.BCEWithLogitsLoss(), freq, lrs=(0.001, 0.05), epochs=6
    )
    assert str(choice["lr"]) == max(choice["val_by_lr"], key=choice["val_by_lr"].get)
    assert choice["val_total"] == max(choice["val_by_lr"].values())


def test_ablation_ships_the_best_validation_row_with_its_claims(tmp_path):
    weights = _random_synth(tmp_path / "synth.safetensors")
    rows = ["zero-shot", "prompts + BCE", "+ GCN, text-embedding graph", "linear probe, BCE"]
    recipe = ablation.RECIPES[0][0]
    payload = ablation.run_ablation(
        tmp_path / "out", seeds=(0, 1), epochs=1, weights=weights, rows=rows, data_options=TINY, recipe=recipe
    )
    table = payload["table"]
    assert list(table) == rows
    assert len(table["linear probe, BCE"]["total"]["runs"]) == 2
    trained = ["prompts + BCE", "+ GCN, text-embedding graph"]
    best = max(trained, key=lambda r: np.mean(table[r]["val_total"]["runs"]))
    shipped = payload["shipped"]
    assert shipped["row"] == best.strip() and shipped["recipe"] == recipe
    path = tmp_path / "out" / "capnet-synth-lt.safetensors"
    meta = read_metadata(path)
    out = tmp_path / "out" / "synth-lt"
    train_csv = pd.read_csv(out / "train" / "labels.csv", keep_default_na=False)
    y = np.zeros((len(train_csv), len(SCENE_CLASSES)), dtype=np.int64)
    for i, labels in enumerate(train_csv["labels"]):
        for name in filter(None, labels.split(";")):
            y[i, SCENE_CLASSES.index(name)] = 1
    assert meta["class_freq"] == y.sum(0).tolist()
    assert meta["train_cooccurrence"] == (y.T @ y).tolist()
    slug = best.strip("+ ").replace(" ", "-").replace(",", "")
    report = json.loads((tmp_path / "out" / "reports" / slug / "report.json").read_text())
    for g in ("total", "head", "medium", "tail"):
        assert meta["claimed_map"][g] == pytest.approx(report["results"]["single"][g], nan_ok=True)
    # The checkpoint, loaded the way users load it, gives the probabilities the ablation scored.
    model = model_from_checkpoint(path, weights=str(weights), device="cpu").eval()
    scores = pd.read_csv(tmp_path / "out" / "reports" / slug / "scores.csv")
    test = read_csv(out / "test" / "labels.csv", out / "test", list(SCENE_CLASSES))
    rows = predict_files(model, test.paths[:8])
    probs = np.array([[row.probabilities[n] for n in SCENE_CLASSES] for row in rows])
    np.testing.assert_allclose(probs, scores[[f"p:{n}" for n in SCENE_CLASSES]].to_numpy()[:8], atol=2e-5)
