"""Training, resuming, the feature cache, evaluation reports and the CLI, end to end on synthetic data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open

from capnet import cli
from capnet.backbone import load_backbone
from capnet.config import RunConfig, from_dict
from capnet.data import Records
from capnet.data.sources import load_split
from capnet.engine import features as feature_module
from capnet.engine.evaluate import score_records
from capnet.engine.schedule import warmup_cosine
from capnet.engine.trainer import ClassAwareSampler, Trainer, TrainingStopped, split_validation
from capnet.metrics import lt_map
from capnet.model import CapNet
from capnet.world.squares import write_coco, write_voc

ROOT = Path(__file__).resolve().parents[1]


def run_config(tmp_path: Path, data: dict, **train) -> dict:
    return {
        "name": "synthetic",
        "model": {
            "backbone": {"name": "capnet-tiny", "pretrained": None, "device": "cpu"},
            "prompt": {"n_ctx": 4},
            "adapter": {"kind": "lora"},
            "init_logit_scale": 100,
        },
        "data": {"num_workers": 0, "val_fraction": 0.2, **data},
        "loss": {"name": "dbfocal"},
        "train": {"epochs": 6, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "warmup_epochs": 0.5,
                  "cache_dir": str(tmp_path / "cache"), "out_dir": str(tmp_path / "runs"), **train},
        "eval": {"tta": True, "batch_size": 32},
    }  # fmt: skip


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def untrained_map(cfg: dict) -> float:
    """The same model with the same seed, before any training, scored like `capnet eval` without TTA."""
    rc = from_dict(RunConfig, cfg)
    pool = load_split(rc.data, "train")
    train, _ = split_validation(pool, rc.data.val_fraction, rc.train.seed)
    test = load_split(rc.data, "test")
    torch.manual_seed(rc.train.seed)
    model = CapNet(load_backbone(rc.model.backbone), pool.class_names, rc.model)
    return lt_map(score_records(model, test), test.labels, train.class_freq)["total"]


@pytest.mark.parametrize("layout", ["voc", "coco"])
def test_training_learns_and_the_report_has_every_field(tmp_path, layout, capsys):
    if layout == "voc":
        data = {"format": "voc", "root": str(write_voc(tmp_path / "voc", 100, 60)), "test": "2007/test"}
    else:
        data = {"format": "coco", "root": str(write_coco(tmp_path / "coco", 100, 60)), "test": "val2017"}
    cfg = run_config(tmp_path, data)
    assert cli.main(["train", "--config", str(write_yaml(tmp_path / "run.yaml", cfg))]) == 0
    out = tmp_path / "runs" / "synthetic"
    report = json.loads((out / "report.json").read_text())
    before = untrained_map(cfg)
    after = report["results"]["single"]["total"]
    tta = report["results"]["tta"]["total"]
    print(f"{layout}: untrained mAP {before:.3f} -> trained {after:.3f} (TTA {tta:.3f})")
    assert after > before + 0.1, (before, after)

    for key in ("total", "head", "medium", "tail", "micro_f1", "macro_f1"):
        assert key in report["results"]["single"] and key in report["results"]["tta"]
    assert report["num_images"] == 60 and len(report["per_class"]) == len(report["class_names"])
    row = report["per_class"][0]
    assert set(row) == {"class", "train_count", "group", "test_positives", "ap_single", "ap_tta"}
    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class["class"]) == report["class_names"]
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 60 and {"image_id", "path"} <= set(scores.columns)
    assert all(f"p:{n}" in scores and f"y:{n}" in scores for n in report["class_names"])
    # The per-image probabilities reproduce the report's AP (TTA is the primary setting).
    c = next(i for i, r in enumerate(report["per_class"]) if r["test_positives"] > 0)
    name = report["class_names"][c]
    from sklearn.metrics import average_precision_score

    assert math.isclose(average_precision_score(scores[f"y:{name}"], scores[f"p:{name}"]),
                        report["per_class"][c]["ap_tta"], abs_tol=1e-4)  # fmt: skip

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 7))
    assert {"train_loss", "lr", "images_per_s", "val_total"} <= set(log[0])
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def _trainer(tmp_path: Path, out: str, **train) -> Trainer:
    data = {"format": "voc", "root": str(write_voc(tmp_path / "voc", 40, 10))}
    rc = from_dict(RunConfig, run_config(tmp_path, data, **{"epochs": 3, **train}))
    pool = load_split(rc.data, "train")
    train_set, val = split_validation(pool, 0.2, 0)
    torch.manual_seed(0)
    model = CapNet(load_backbone(rc.model.backbone), pool.class_names, rc.model)
    return Trainer(rc, model, train_set, val, tmp_path / out)


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_resume_continues_to_the_same_result(tmp_path, adapter):
    straight = _trainer(tmp_path, "a", class_aware_sampling=True)
    if adapter == "none":
        straight.cfg.model.adapter.kind = "none"
    straight.fit()
    first = _trainer(tmp_path, "b", class_aware_sampling=True)
    assert first.fit(stop_after=2) is None
    resumed = _trainer(tmp_path, "b", class_aware_sampling=True)
    assert resumed.fit(resume=True) is not None
    a, b = straight.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    log = [json.loads(x)["epoch"] for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    assert not list((tmp_path / "b").glob("*.tmp"))


def test_should_stop_ends_training_between_two_steps(tmp_path):
    trainer = _trainer(tmp_path, "run")
    assert trainer.steps_per_epoch >= 2
    asked = []

    def second_call_stops() -> bool:
        asked.append(1)
        return len(asked) == 2

    with pytest.raises(TrainingStopped, match="epoch 1 after 16 images"):
        trainer.fit(should_stop=second_call_stops)
    steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {1}  # AdamW counts its own steps: one ran, the second never started
    assert not (tmp_path / "run" / "log.jsonl").exists()  # an unfinished epoch is neither logged nor saved


def test_feature_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    calls = []
    real = feature_module.compute_features
    monkeypatch.setattr(feature_module, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))

    data = {"format": "voc", "root": str(write_voc(tmp_path / "voc", 30, 10))}

    def build(seed: int = 0) -> Trainer:
        cfg = run_config(tmp_path, data, epochs=2)
        cfg["model"]["adapter"]["kind"] = "none"
        rc = from_dict(RunConfig, cfg)
        pool = load_split(rc.data, "train")
        torch.manual_seed(seed)
        return Trainer(rc, CapNet(load_backbone(rc.model.backbone), pool.class_names, rc.model), pool, None,
                       tmp_path / "out")  # fmt: skip

    first = build()
    assert first.use_cache and len(calls) == 1 and first.cached.shape[:2] == (30, 2)
    first.fit()
    assert len(calls) == 1, "training epochs must reuse the cached features"
    again = build()
    assert len(calls) == 1 and torch.equal(again.cached, first.cached)
    build(seed=1)  # other (random) backbone weights: never the same cache
    assert len(calls) == 2
    image = next((tmp_path / "voc").rglob("VOC2012/JPEGImages/*.jpg"))
    os.utime(image, ns=(0, 0))  # a changed image file
    build()
    assert len(calls) == 3


def test_class_aware_sampler_balances_classes():
    labels = np.zeros((1000, 4), np.uint8)
    labels[:900, 0] = 1
    labels[900:980, 1] = 1
    labels[980:995, 2] = 1
    labels[995:, 3] = 1
    sampler = ClassAwareSampler(labels, 8000, torch.Generator().manual_seed(0))
    picked = labels[list(sampler)].sum(0) / 8000
    assert np.all(np.abs(picked - 0.25) < 0.03), picked


def test_warmup_then_cosine():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [round(factor(s), 12) for s in range(10)] == [round(e, 12) for e in expected]


def test_two_process_ddp_on_gloo(tmp_path):
    data = {"format": "voc", "root": str(write_voc(tmp_path / "voc", 32, 8))}
    config = write_yaml(tmp_path / "ddp.yaml", run_config(tmp_path, data, epochs=2, batch_size=8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "capnet.cli", "train", "--config", str(config), "--no-eval"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "synthetic"
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # one writer: rank 0
    assert (out / "model.safetensors").is_file()


# The validation mAP of each epoch, scripted: a peak at epoch 2, tied again at epoch 4 (the earlier wins).
SCRIPTED_VAL = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.9}


def _scripted(monkeypatch, tmp_path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Validation follows SCRIPTED_VAL; returns the model tensors each saved state held, by epoch."""
    saved: dict[int, dict[str, torch.Tensor]] = {}
    train_epoch, end_epoch = Trainer._train_epoch, Trainer._end_epoch

    def record_epoch(self, epoch, should_stop=None):
        self.scripted_epoch = epoch + 1
        return train_epoch(self, epoch, should_stop)

    def keep_state(self, row):
        end_epoch(self, row)
        with safe_open(str(self.out_dir / "last_state.safetensors"), framework="pt") as f:
            key = (self.out_dir.name, row["epoch"])
            saved[key] = {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model/")}  # noqa: SIM118

    monkeypatch.setattr(Trainer, "_train_epoch", record_epoch)
    monkeypatch.setattr(Trainer, "_end_epoch", keep_state)
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_total": SCRIPTED_VAL[self.scripted_epoch]})
    return saved


def _checkpoint_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["capnet"])  # noqa: SIM118


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_checkpoint_keeps_the_best_validation_epoch_or_the_last(tmp_path, monkeypatch, keep):
    saved = _scripted(monkeypatch, tmp_path)
    trainer = _trainer(tmp_path, "run", epochs=4, keep=keep)
    final = trainer.fit()
    tensors, meta = _checkpoint_tensors(final)
    kept_epoch = 2 if keep == "best" else 4
    assert meta["kept"]["epoch"] == kept_epoch and meta["kept"]["rule"] == keep
    assert meta["kept"]["reason"] == ("best validation epoch 2 of 4" if keep == "best" else "last epoch")
    assert not torch.equal(saved["run", 2]["prompts.ctx"], saved["run", 4]["prompts.ctx"])
    assert tensors.keys() == saved["run", kept_epoch].keys()
    for key, tensor in tensors.items():
        assert torch.equal(tensor, saved["run", kept_epoch][key]), key
    # The model in memory is the kept one (cmd_train evaluates it), and the log says which and why.
    for key, tensor in trainer.model.trainable_state_dict().items():
        assert torch.equal(tensor, saved["run", kept_epoch][key]), key
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["best_epoch"] for r in log] == ([1, 2, 2, 2] if keep == "best" else [1, 2, 3, 4])
    assert log[-1]["kept"] == meta["kept"]["reason"] and "kept" not in log[0]


def test_without_a_validation_split_the_last_epoch_is_kept(tmp_path):
    data = {"format": "voc", "root": str(write_voc(tmp_path / "voc", 24, 4))}
    rc = from_dict(RunConfig, run_config(tmp_path, data, epochs=2))
    pool = load_split(rc.data, "train")
    torch.manual_seed(0)
    trainer = Trainer(rc, CapNet(load_backbone(rc.model.backbone), pool.class_names, rc.model), pool, None,
                      tmp_path / "run")  # fmt: skip
    _, meta = _checkpoint_tensors(trainer.fit())
    assert meta["kept"]["reason"] == "last epoch (no validation split)" and meta["kept"]["epoch"] == 2


@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_resumed_run_keeps_the_same_best_epoch(tmp_path, monkeypatch, stop_after):
    _scripted(monkeypatch, tmp_path)
    straight, straight_meta = _checkpoint_tensors(_trainer(tmp_path, "a", epochs=4).fit())
    assert _trainer(tmp_path, "b", epochs=4).fit(stop_after=stop_after) is None
    resumed, resumed_meta = _checkpoint_tensors(_trainer(tmp_path, "b", epochs=4).fit(resume=True))
    assert resumed_meta["kept"] == straight_meta["kept"] and straight_meta["kept"]["epoch"] == 2
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def _multilabel_records(n: int, n_classes: int, seed: int) -> Records:
    """A long-tailed multi-label pool: class c appears in about n * 0.5 / (c + 1) ** 1.3 images."""
    rng = np.random.default_rng(seed)
    rates = 0.5 / (np.arange(n_classes) + 1) ** 1.3
    labels = (rng.random((n, n_classes)) < rates).astype(np.uint8)
    labels[rng.permutation(n)[:2], -1] = 1  # the rarest class: exactly the images drawn here and before
    names = [f"c{c}" for c in range(n_classes)]
    return Records(names, [f"i{k}" for k in range(n)], [Path(f"i{k}.png") for k in range(n)], labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_validation_split_is_stratified_disjoint_and_deterministic(seed):
    pool = _multilabel_records(300, 20, seed)
    counts = pool.labels.sum(0)
    assert (counts == 2).any() or (counts < 5).any()  # rare classes are the point of the test
    train, val = split_validation(pool, 0.2, seed)
    ids_train, ids_val = set(train.image_ids), set(val.image_ids)
    assert not ids_train & ids_val and ids_train | ids_val == set(pool.image_ids)
    assert len(train) + len(val) == len(pool)
    # Every class with at least two images has a validation positive and keeps half for training.
    val_counts, train_counts = val.labels.sum(0), train.labels.sum(0)
    for c in np.flatnonzero(counts >= 2):
        assert val_counts[c] >= 1, (pool.class_names[c], counts[c])
        assert train_counts[c] >= counts[c] - counts[c] // 2
    # The stated tolerance: round(fraction * N), plus at most one image per class for the minimums.
    assert 60 <= len(val) <= 60 + 20
    again_train, again_val = split_validation(pool, 0.2, seed)
    assert again_val.image_ids == val.image_ids and again_train.image_ids == train.image_ids
    assert split_validation(pool, 0.2, seed + 10)[1].image_ids != val.image_ids


def test_plain_random_cut_would_miss_rare_classes():
    """Guards the guard: on this pool a plain random fifth misses some class that the split must cover."""
    pool = _multilabel_records(300, 20, 0)
    counts = pool.labels.sum(0)
    misses = 0
    for seed in range(20):
        cut = np.random.default_rng(seed).permutation(len(pool))[:60]
        misses += int((pool.labels[cut].sum(0)[counts >= 2] == 0).any())
    assert misses > 0
    for seed in range(20):
        val = split_validation(pool, 0.2, seed)[1]
        assert (val.labels.sum(0)[counts >= 2] > 0).all()
