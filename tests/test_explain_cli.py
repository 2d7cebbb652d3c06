"""`capnet explain` (issue 13): evidence-map PNGs and JSON on the shipped tiny CLIP, one-line errors, and the
graph attribution of a trained CAPNET checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from capnet import cli
from capnet.world.scenes import SCENE_CLASSES, scene_batch, write_scenes

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "checkpoints" / "capnet-synth.safetensors"
ZERO_SHOT = ["--model", "capnet-synth", "--pretrained", "none", "--weights", str(SYNTH),
             "--labels", ",".join(SCENE_CLASSES)]  # fmt: skip


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Image.Image]:
    images, labels, _ = scene_batch(1, 4321)
    path = tmp_path / "my scene.png"
    images[0].save(path)
    return path, images[0]


def one_line_error(capsys, *needles: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("capnet: error: "), lines
    assert not any(line.startswith(("Traceback", "capnet: error")) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def patch_grid() -> tuple[int, int]:
    """The tower's patch grid from open_clip's own model attributes (image size over patch size)."""
    from capnet.backbone import load_backbone

    visual = load_backbone(
        name="capnet-synth", pretrained=None, weights=str(SYNTH), device="cpu"
    ).model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    patch = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    return size[0] // patch[0], size[1] // patch[1]


def test_zero_shot_maps_match_predict_and_draw_one_png_per_class(scene, tmp_path, capsys):
    path, image = scene
    classes = ["blue ring", "Red Star", "pink heart"]
    out = tmp_path / "maps"
    flags = [f for c in classes for f in ("--class", c)]
    assert cli.main(["explain", str(path), *ZERO_SHOT, *flags, "--out", str(out), "--format", "json"]) == 0
    maps = json.loads(capsys.readouterr().out)
    assert [m["class"] for m in maps] == ["blue ring", "red star", "pink heart"]

    assert cli.main(["predict", str(path), *ZERO_SHOT, "--format", "json", "--workers", "0"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    grid = patch_grid()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == len(classes)
    for m in maps:
        assert m["probability"] == pytest.approx(row["probabilities"][m["class"]], abs=1e-5)
        assert tuple(m["grid_shape"]) == grid and len(m["grid"]) == grid[0] and len(m["grid"][0]) == grid[1]
        assert "unavailable" in m["graph"] and "zero-shot" in m["graph"]["unavailable"]
        png = Path(m["png"])
        assert png.parent == out and " " not in png.name and png.name.startswith("my_scene__")
        with Image.open(png) as drawn:
            drawn.load()
            # the image at its own size, a title line above it and a colour bar to its right
            assert drawn.height == image.height + 14 and drawn.width > image.width + 8

    assert cli.main(["explain", str(path), *ZERO_SHOT, "--out", str(tmp_path / "top")]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    top3 = sorted(row["probabilities"], key=lambda c: -row["probabilities"][c])[:3]
    shown = [line for line in text if " -> " in line]
    assert [line.split("  ")[1].split(":")[0] for line in shown] == top3
    assert f"p={row['probabilities'][top3[0]]:.3f}" in shown[0]
    assert len(list((tmp_path / "top").glob("*.png"))) == 3
    assert text[-1].startswith("no graph attribution: ")


def test_user_mistakes_are_one_line(scene, tmp_path, capsys):
    path, _ = scene
    base = ["explain", str(path), *ZERO_SHOT, "--out", str(tmp_path / "maps")]
    assert cli.main([*base, "--class", "blue rinq"]) == 2
    one_line_error(capsys, "'blue rinq'", "did you mean", "'blue ring'")
    assert not list((tmp_path / "maps").glob("*.png"))
    assert cli.main([*base, "--method", "occlusion", "--grid", "33"]) == 2
    one_line_error(capsys, "--grid", "32")
    assert cli.main([*base, "--top", "21"]) == 2
    one_line_error(capsys, "--top")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["explain", str(empty), *ZERO_SHOT, "--out", str(tmp_path / "maps")]) == 2
    one_line_error(capsys, "no image files")


def test_occlusion_grid_is_the_requested_size(scene, tmp_path, capsys):
    path, _ = scene
    args = ["explain", str(path), *ZERO_SHOT, "--class", "blue ring", "--out", str(tmp_path / "maps")]
    assert cli.main([*args, "--method", "occlusion", "--grid", "3", "--format", "json"]) == 0
    (m,) = json.loads(capsys.readouterr().out)
    assert m["method"] == "occlusion" and m["grid_shape"] == [3, 3]


def test_a_trained_checkpoint_carries_the_graph_attribution(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    write_scenes(tmp_path / "data" / "train", 60, 11, balanced=True)
    write_scenes(tmp_path / "data" / "test", 40, 12, balanced=True)
    config = {
        "name": "tiny",
        "model": {"backbone": {"name": "capnet-tiny", "pretrained": None, "device": "cpu"},
                  "prompt": {"n_ctx": 4}, "adapter": {"kind": "none"}},
        "data": {"format": "csv", "root": str(tmp_path / "data"), "train": "train/labels.csv",
                 "test": "test/labels.csv", "num_workers": 0, "val_fraction": 0.25},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "warmup_epochs": 0.5,
                  "cache_dir": str(tmp_path / "cache"), "out_dir": str(tmp_path / "runs")},
        "eval": {"tta": False, "batch_size": 32},
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml"), "--no-eval"]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "model.safetensors"
    capsys.readouterr()
    image = sorted((tmp_path / "data" / "test" / "images").glob("*.png"))[0]
    base = ["explain", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "maps")]
    assert cli.main([*base, "--format", "json"]) == 0
    maps = json.loads(capsys.readouterr().out)
    assert len(maps) == 3
    for m in maps:
        graph = m["graph"]
        assert graph["class"] == m["class"] and graph["logit"] == pytest.approx(m["logit"], abs=1e-4)
        assert set(graph) >= {"logit_without_gcn", "logit_without_edges", "edges"}
        changes = [abs(e["change"]) for e in graph["edges"]]
        assert changes == sorted(changes, reverse=True)
    assert any(m["graph"]["edges"] for m in maps)
    assert cli.main(base) == 0
    text = capsys.readouterr().out
    assert "because of `" in text and "no graph attribution" not in text
    g = maps[0]["graph"]
    assert f"logit {g['logit_without_gcn']:.3f} without the GCN, {g['logit']:.3f} with it" in text
    assert cli.main([*base, "--labels", "a,b"]) == 2
    one_line_error(capsys, "--labels")
