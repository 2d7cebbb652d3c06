"""The app's model choice and prediction functions (the browser tests drive the same code through the UI)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from app import models as app_models
from app.models import ModelChoice, load_served_models
from app.predict import bar_chart, parse_labels, predict, read_uploads, zero_shot_model
from capnet.checkpoint import save_checkpoint
from capnet.labelsets import COCO
from capnet.model import CapNet


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CAPNET_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def test_offline_fallback_never_crashes_and_says_so(offline, monkeypatch):
    monkeypatch.setattr(app_models, "SYNTH_WEIGHTS", offline / "absent.safetensors")
    served = load_served_models(ModelChoice(), checkpoints_dir=offline)
    assert served.backbone.config.name == "capnet-tiny" and served.trained is None
    assert "Offline fallback" in served.banner and "--weights" in served.banner


def test_checkpoint_in_folder_is_served_with_zero_shot_alongside(offline, tiny_backbone):
    model = CapNet(tiny_backbone(), ["cat", "dog", "traffic light"])
    with torch.no_grad():
        model.class_bias.fill_(0.7)
    save_checkpoint(model, offline / "run.safetensors", {"class_freq": [150, 30, 4]})
    torch.manual_seed(0)  # the tiny backbone has random weights: rebuild the same ones
    served = load_served_models(ModelChoice(), checkpoints_dir=offline)
    assert served.trained is not None and "run.safetensors" in served.banner
    images = [("a.png", Image.new("RGB", (40, 30), "red")), ("b.png", Image.new("RGB", (30, 40), "blue"))]
    labels = ("cat", "dog", "traffic light")
    models = {"CAPNET": served.trained, "zero-shot": zero_shot_model(served, labels)}
    result = predict(models, images, counts=served.trained_counts)
    assert result.models == ["CAPNET", "zero-shot"]
    assert len(result.table) == 2 * 2 * 3
    first = result.table[(result.table.image == "a.png") & (result.table.model == "CAPNET")]
    assert list(first.probability) == sorted(first.probability, reverse=True)
    expected = model.eval().predict(model.image_transform()(images[0][1]).unsqueeze(0))[0]
    got = dict(zip(first.label, first.probability))
    assert all(abs(got[n] - p) < 1e-5 for n, p in zip(model.class_names, expected.tolist()))
    fig = bar_chart(result, "a.png", 0.5)
    assert {trace.name for trace in fig.data} == {"CAPNET", "zero-shot"}
    assert result.groups == {"cat": "head", "dog": "medium", "traffic light": "tail"}
    assert any("(tail)" in y for y in fig.data[0].y)


def test_labels_are_validated():
    assert parse_labels("COCO", "") == COCO
    assert parse_labels("Custom", "cat, dog\ntraffic light") == ("cat", "dog", "traffic light")
    with pytest.raises(ValueError, match="empty"):
        parse_labels("Custom", " , ")
    with pytest.raises(ValueError, match="duplicated"):
        parse_labels("Custom", "cat, Cat")


def test_bad_uploads_are_reported_not_raised(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (10, 10)).save(good)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    images, problems = read_uploads([str(good), str(text)])
    assert [n for n, _ in images] == ["good.png"]
    assert len(problems) == 1 and "notes.txt" in problems[0]


def test_offline_default_is_the_synthetic_world(offline, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    from app.predict import samples_for
    from capnet.world.scenes import SCENE_CLASSES

    weights = offline / "capnet-synth.safetensors"
    clip = open_clip.create_model("capnet-synth", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    monkeypatch.setattr(app_models, "SYNTH_WEIGHTS", weights)
    served = load_served_models(ModelChoice(), checkpoints_dir=offline)  # not a capnet checkpoint: skipped
    assert served.world and served.backbone.config.name == "capnet-synth"
    assert "Offline: serving capnet-synth" in served.banner and "could not be loaded" not in served.banner
    samples = samples_for(served)
    assert list(samples) == [f"scene {i}" for i in range(1, 7)]
    result = predict({"zero-shot": zero_shot_model(served, SCENE_CLASSES)}, list(samples.items())[:2])
    assert len(result.table) == 2 * len(SCENE_CLASSES)
