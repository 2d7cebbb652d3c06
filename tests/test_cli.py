"""The capnet command: predict, build-lt, and one-line errors for what users get wrong."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from capnet import cli
from capnet.backbone import load_backbone
from capnet.checkpoint import save_checkpoint
from capnet.config import load_run_config
from capnet.data import read_voc
from capnet.data.longtail import build_longtail
from capnet.model import CapNet
from capnet.world.squares import write_voc
from tests.common import official_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CapNet(load_backbone(name="capnet-tiny", pretrained=None, device="cpu"), ["red", "green", "blue"])
    with torch.no_grad():
        model.class_bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    return model, save_checkpoint(model, tmp_path / "m.safetensors")


def _images(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(["red", "green", "blue"][:n]):
        Image.new("RGB", (40, 30), colour).save(folder / f"{i}_{colour}.png")
    return folder


def test_predict_writes_csv_and_json_matching_the_model(tmp_path, checkpoint, capsys):
    model, path = checkpoint
    folder = _images(tmp_path / "imgs")
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    torch.manual_seed(0)  # the tiny backbone is rebuilt from its recipe with the same random weights
    assert cli.main(["predict", str(folder), "--checkpoint", str(path), "--format", "csv",
                     "--output", str(tmp_path / "p.csv"), "--workers", "0"]) == 0  # fmt: skip
    frame = pd.read_csv(tmp_path / "p.csv")
    assert len(frame) == 3 and list(frame.columns[2:]) == ["red", "green", "blue"]
    image = Image.open(folder / "0_red.png").convert("RGB")
    expected = model.eval().predict(model.image_transform()(image).unsqueeze(0))[0].numpy()
    assert np.allclose(frame.iloc[0][["red", "green", "blue"]].to_numpy(float), expected, atol=1e-5)

    torch.manual_seed(0)
    assert cli.main(["predict", str(folder / "1_green.png"), "--checkpoint", str(path), "--format", "json",
                     "--threshold", "0.0", "--workers", "0"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["labels"] == ["red", "green", "blue"]  # threshold 0 keeps all, ranked by probability


@pytest.mark.parametrize("no_tag", ["", "none", "null", "None"])
def test_zero_shot_predict_table(tmp_path, capsys, monkeypatch, no_tag):
    _images(tmp_path / "a", 2)
    _images(tmp_path / "b", 1)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "a", "b", "--model", "capnet-tiny", "--pretrained", no_tag,
                     "--labels", "cat,dog", "--workers", "0", "--threshold", "0.05"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    # Paths as the user named them, so a/0_red.png and b/0_red.png are told apart.
    assert [line.split()[0] for line in lines[:3]] == ["a/0_red.png", "a/1_green.png", "b/0_red.png"]
    assert all("cat" in line and "dog" in line for line in lines[:3])
    assert lines[3] == "(*: at or above the threshold 0.05)"


def test_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capnet: error: config file not found") and "\n" not in err

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err

    pkl = tmp_path / "model.safetensors"
    pkl.write_bytes(pickle.dumps({"a": 1}))
    assert cli.main(["predict", str(tmp_path), "--checkpoint", str(pkl)]) == 2
    assert "not a safetensors checkpoint" in capsys.readouterr().err

    csv = tmp_path / "data.csv"
    csv.write_text("path,labels\na.jpg,cat;unicorn\n")
    cfg = tmp_path / "csv.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "csv", "root": str(tmp_path), "train": str(csv),
                                            "class_names": ["cat", "dog"]}}))  # fmt: skip
    assert cli.main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unicorn" in err and "\n" not in err


def test_missing_images_are_listed_or_skipped(tmp_path, capsys):
    root = write_voc(tmp_path / "voc", 12, 4)
    victims = sorted((root / "VOC2012" / "JPEGImages").glob("*.jpg"))[:2]
    for v in victims:
        v.unlink()
    data = {"format": "voc", "root": str(root), "num_workers": 0, "val_fraction": 0.0}
    base = {"model": {"backbone": {"name": "capnet-tiny", "pretrained": None}, "adapter": {"kind": "none"}},
            "train": {"epochs": 1, "batch_size": 8, "cache_dir": "", "out_dir": str(tmp_path / "runs")},
            "data": data}  # fmt: skip
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(base))
    assert cli.main(["train", "--config", str(cfg), "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert all(v.stem in err for v in victims)
    assert cli.main(["train", "--config", str(cfg), "--no-eval", "--set", "data.skip_bad=true"]) == 0
    assert "skipped 2 unusable training image(s)" in capsys.readouterr().err


def test_build_lt_on_a_voc_tree(tmp_path, capsys):
    root = write_voc(tmp_path / "voc", 80, 4)
    cfg = tmp_path / "voc.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"format": "voc", "root": str(root)}}))
    ids = tmp_path / "lt" / "ids.txt"
    assert cli.main(["build-lt", "--config", str(cfg), "--max-per-class", "30", "--out-ids", str(ids)]) == 0
    pool = read_voc(root, "2012", "trainval")
    expected = build_longtail(pool.labels, 30, seed=0)
    assert ids.read_text().split() == [pool.image_ids[i] for i in expected]
    summary = json.loads(ids.with_suffix(".json").read_text())
    assert summary["num_images"] == len(expected) and summary["max_per_class"] == 30
    assert summary["class_counts"] == pool.labels[expected].sum(0).tolist()


def test_official_voc_lt_ids_select_the_training_set(tmp_path):
    """The official id list applied to a VOC pool (a tree holding exactly those ids) gives 1,142 images."""
    id_file = official_file("voc-lt", "img_id.txt")
    ids = id_file.read_text().split()
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    for image_id in ids:
        (base / "Annotations" / f"{image_id}.xml").write_text(
            "<annotation><object><name>person</name></object></annotation>"
        )
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(reversed(ids)) + "\n")
    from capnet.config import DataConfig
    from capnet.data.sources import load_split

    records = load_split(DataConfig(format="voc", root=str(tmp_path), train_ids=str(id_file)), "train")
    assert records.image_ids == ids and len(records) == 1142


@pytest.mark.parametrize(
    ("name", "fmt", "mu", "neg_scale", "bottleneck"),
    [("voc_lt", "voc", 0.3, 5.0, 1), ("coco_lt", "coco", 0.2, 2.0, 2), ("nus_wide", "nus_wide", 0.2, 2.0, 2)],
)
def test_shipped_configs_load_with_their_loss_settings(name, fmt, mu, neg_scale, bottleneck):
    cfg = load_run_config(str(ROOT / "configs" / f"{name}.yaml"), ["train.epochs=3"])
    assert (cfg.data.format, cfg.loss.mu, cfg.loss.neg_scale) == (fmt, mu, neg_scale)
    assert cfg.model.adapter.bottleneck == bottleneck and cfg.train.epochs == 3
    assert cfg.model.backbone.name == "ViT-B-16" and cfg.model.backbone.pretrained == "openai"
    assert cfg.data.val_fraction > 0  # model selection never looks at the test set
