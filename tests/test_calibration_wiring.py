"""The app and `capnet predict` share one zero-shot calibration: same reference, same probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from app import text as app_text
from app.label_sources import SCENES
from app.models import ServedModels
from app.predict import predict, read_uploads, zero_shot_model
from app.tabs.predict import run_predict
from capnet import cli
from capnet.backbone import load_backbone
from capnet.model import CapNet
from capnet.world.scenes import SCENE_CLASSES, reference_scenes, scene_batch

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "checkpoints" / "capnet-synth.safetensors"
ZERO_SHOT = ["--model", "capnet-synth", "--pretrained", "none", "--weights", str(SYNTH)]
LABELS = ["--labels", ",".join(SCENE_CLASSES), "--format", "json", "--workers", "0"]

pytestmark = pytest.mark.skipif(not SYNTH.is_file(), reason="needs the shipped capnet-synth weights")


@pytest.fixture
def scenes(tmp_path, monkeypatch) -> list[Path]:
    """Three scenes of a stream no reference uses, as PNG files; the feature cache goes under tmp_path."""
    monkeypatch.chdir(tmp_path)
    paths = []
    for i, image in enumerate(scene_batch(3, seed=9090)[0]):
        paths.append(tmp_path / f"scene{i}.png")
        image.save(paths[-1])
    return paths


def _cli_json(capsys, *argv: str) -> tuple[list[dict], str]:
    assert cli.main(["predict", *argv]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _vector(row: dict, key: str) -> np.ndarray:
    return np.array([row[key][name] for name in SCENE_CLASSES])


def test_the_app_and_the_cli_give_the_same_probabilities(scenes, capsys):
    backbone = load_backbone(name="capnet-synth", pretrained=None, weights=str(SYNTH))
    served = ServedModels(backbone, "", world=True)
    images, problems = read_uploads([str(scenes[0])])
    assert not problems
    model = zero_shot_model(served, SCENE_CLASSES)
    table = predict({"zero-shot": model}, images).table.set_index("label")
    app = table.loc[list(SCENE_CLASSES), "probability"].to_numpy()
    assert model.calibration.describe() == (
        "zero-shot probabilities calibrated on 256 reference images (synthetic-world scenes), prior 0.10"
    )

    # The Predict tab's message names the calibration, escaped as all its text is.
    message = run_predict(served, [str(scenes[0])], [], SCENES, "", 0.5, False, None)[0]
    assert message.endswith(app_text.md(f"Zero-shot: {model.calibration.describe()}."))
    assert r"images \(synthetic\-world scenes\), prior 0\.10" in message

    rows, err = _cli_json(capsys, str(scenes[0]), *ZERO_SHOT, *LABELS)
    assert err.splitlines()[0] == f"capnet: {model.calibration.describe()}"
    cli_probs = _vector(rows[0], "probabilities")
    assert np.allclose(cli_probs, app, rtol=0, atol=1e-5), np.abs(cli_probs - app).max()

    # Both are set on the world's 256 reference scenes with the flat prior 2 / 20: the bias of each class is
    # -s times the 0.9 quantile of its cosines over those scenes (numpy's quantile, computed here).
    fresh = CapNet(backbone, SCENE_CLASSES, zero_shot=True).eval()
    transform = fresh.image_transform()
    with torch.no_grad():
        feats = fresh.encode_image(torch.stack([transform(im) for im in reference_scenes()])).double()
        text = torch.nn.functional.normalize(fresh.text_features.double(), dim=-1)
    scale = math.exp(float(backbone.model.logit_scale))
    bias = -scale * np.quantile((feats @ text.T).numpy(), 0.9, axis=0)
    expected = 1 / (1 + np.exp(-(_vector(rows[0], "raw_logits") + bias)))
    assert np.allclose(cli_probs, expected, rtol=0, atol=1e-4)


def test_raw_gives_the_sigmoid_of_the_raw_logit_and_says_so(scenes, capsys):
    calibrated, _ = _cli_json(capsys, *map(str, scenes), *ZERO_SHOT, *LABELS)
    raw, err = _cli_json(capsys, *map(str, scenes), *ZERO_SHOT, *LABELS, "--raw")
    assert err.splitlines()[0].startswith("capnet: zero-shot scores uncalibrated (raw)")
    for cal_row, raw_row in zip(calibrated, raw):
        logits = _vector(raw_row, "raw_logits")
        assert np.allclose(_vector(raw_row, "probabilities"), 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
        # The same scaled cosines either way; only the probabilities move (raw says yes to far more).
        assert np.allclose(_vector(cal_row, "raw_logits"), logits, rtol=0, atol=1e-4)
        assert np.abs(_vector(cal_row, "probabilities") - _vector(raw_row, "probabilities")).max() > 0.1
        assert len(raw_row["labels"]) > len(cal_row["labels"])


def test_calibrate_on_a_folder_with_a_corrupt_file(scenes, tmp_path, capsys):
    folder = tmp_path / "refs"
    folder.mkdir()
    for i, image in enumerate(scene_batch(3, seed=7070)[0]):
        image.save(folder / f"ref{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    rows, err = _cli_json(capsys, str(scenes[0]), *ZERO_SHOT, *LABELS, "--calibrate-on", str(folder))
    lines = err.splitlines()
    assert len([line for line in lines if line.startswith("capnet: skipped") and "broken.png" in line]) == 1
    assert (
        f"capnet: zero-shot probabilities calibrated on 3 reference images (folder {folder}), "
        "1 unreadable file(s) skipped, prior 0.10"
    ) in lines
    assert set(rows[0]["probabilities"]) == set(rows[0]["raw_logits"]) == set(SCENE_CLASSES)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--calibrate-on", "no-such-folder"], "calibration folder not found: no-such-folder"),
        (["--calibrate-on", ".", "--raw"], "--raw leaves zero-shot scores uncalibrated"),
    ],
)
def test_calibration_mistakes_are_one_line(scenes, capsys, extra, needle):
    assert cli.main(["predict", str(scenes[0]), *ZERO_SHOT, *LABELS, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("capnet: error: ") and needle in err[-1], err


@pytest.mark.parametrize("flag", [["--raw"], ["--calibrate-on", "."]])
def test_a_trained_checkpoint_keeps_its_biases(scenes, tmp_path, capsys, flag):
    from capnet.checkpoint import save_checkpoint

    trained = CapNet(load_backbone(name="capnet-tiny", pretrained=None), ["red", "green"])
    path = save_checkpoint(trained, tmp_path / "m.safetensors")
    assert cli.main(["predict", str(scenes[0]), "--checkpoint", str(path), "--workers", "0", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capnet: error: --calibrate-on and --raw concern zero-shot") and "\n" not in err
