"""Zero-shot calibration: biases from a fixed reference set, its prior, its feature cache, its folders."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from capnet.calibration import (
    CalibrationError,
    ReferenceFeatures,
    ReferenceSet,
    calibrate_zero_shot,
    choose_reference,
    flat_prior,
    folder_reference,
    reference_features,
    skimage_reference,
    uncalibrated,
)
from capnet.model import CapNet
from tests.common import ODD_NAMES, VOC_CLASSES


def _images(n: int, seed: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _constructed_features(n: int, dim: int = 64, seed: int = 0) -> ReferenceFeatures:
    feats = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))
    return ReferenceFeatures(F.normalize(feats, dim=-1), "constructed", 0, [], False)


def _count_tower_calls(model: CapNet) -> list[int]:
    calls = [0]
    model.clip.visual.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_bias_is_minus_scale_times_the_numpy_quantile(tiny_backbone):
    backbone = tiny_backbone()
    model = CapNet(backbone, ODD_NAMES, zero_shot=True)
    ref = _constructed_features(50)
    feats = ref.features.numpy().astype(np.float64)
    text = model.text_features.numpy().astype(np.float64)
    cos = feats @ (text / np.linalg.norm(text, axis=1, keepdims=True)).T
    scale = math.exp(float(backbone.model.logit_scale))

    result = calibrate_zero_shot(model, ref, prior=0.3)
    assert np.allclose(result.biases, -scale * np.quantile(cos, 0.7, axis=0), atol=1e-4)

    priors = [0.05, 0.1, 0.2, 0.4, 0.5]
    result = calibrate_zero_shot(model, ref, prior=priors)
    expected = [-scale * np.quantile(cos[:, c], 1 - p) for c, p in enumerate(priors)]
    assert np.allclose(result.biases, expected, atol=1e-4)
    assert np.array_equal(model.class_bias.detach().numpy(), result.biases)
    assert result.describe().endswith("per-class priors 0.05-0.50")


def test_flat_prior_flags_that_share_of_the_reference_images(tiny_backbone):
    names = VOC_CLASSES[:10]
    model = CapNet(tiny_backbone(), names, zero_shot=True)
    n = 64
    ref = _constructed_features(n, seed=3)
    result = calibrate_zero_shot(model, ref)  # labels_per_image 2 over 10 classes
    p = 0.2
    assert result.prior == flat_prior(10) == p
    probs = torch.sigmoid(model.score(ref.features, model.cached_class_features()))
    flagged = (probs > 0.5).sum(0).numpy()
    # Linear-interpolation quantile at position h = (n - 1)(1 - p), h not whole: the values strictly above
    # it are the n - 1 - floor(h) largest.
    expected = n - 1 - math.floor((n - 1) * (1 - p))
    assert expected == 13 and (flagged == expected).all(), flagged
    assert flat_prior(2) == 0.5 and flat_prior(80, 2.9) == pytest.approx(2.9 / 80)


def test_one_image_gets_the_same_probabilities_alone_or_among_a_hundred(tiny_backbone, tmp_path):
    model = CapNet(tiny_backbone(), ODD_NAMES, zero_shot=True).eval()
    calibrate_zero_shot(model, ReferenceSet.of_images("noise", _images(16, seed=1)), cache_dir=tmp_path)
    biases = model.class_bias.detach().clone()
    x = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first, second = x[:100].clone(), x[100:].clone()
    second[37] = first[37]
    third = x[100:].clone()
    third[0] = first[37]
    among = model.predict(first)[37]
    # Among a hundred other images, wherever it sits in the batch: exactly the same probabilities.
    assert torch.equal(among, model.predict(second)[37])
    assert torch.equal(among, model.predict(third)[0])
    # Alone: a batch of one takes other matrix kernels (float rounding, 1e-7), never another calibration.
    alone = model.predict(first[37:38])[0]
    assert torch.allclose(alone, among, rtol=0, atol=1e-6)
    assert torch.equal(alone >= 0.5, among >= 0.5)
    assert torch.equal(model.class_bias, biases)  # predicting never moves the biases
    # The check has teeth: biases set on the batch being predicted would move this image's probabilities.
    model.calibrate(model.encode_image(x[100:]), 0.4)
    assert (model.predict(first)[37] - among).abs().max() > 1e-3


def test_features_come_from_the_cache_until_weights_or_references_change(tiny_backbone, tmp_path):
    backbone = tiny_backbone()
    reference = ReferenceSet.of_images("noise", _images(6, seed=2))
    fresh = calibrate_zero_shot(CapNet(backbone, ["cat", "dog"], zero_shot=True), reference, cache_dir=None)
    model = CapNet(backbone, ODD_NAMES, zero_shot=True)
    calls = _count_tower_calls(model)  # the tower is shared by every CapNet built on this backbone
    first = calibrate_zero_shot(model, reference, cache_dir=tmp_path)
    assert calls[0] == 1 and not first.cached and first.images == 6
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]

    other_labels = CapNet(backbone, ["cat", "dog"], zero_shot=True)  # same tower, other label set
    hit = calibrate_zero_shot(other_labels, reference, cache_dir=tmp_path)
    assert calls[0] == 1 and hit.cached and hit.images == 6
    assert np.array_equal(hit.biases, fresh.biases)

    same_pixels = ReferenceSet.of_images("noise again", _images(6, seed=2))
    assert calibrate_zero_shot(model, same_pixels, cache_dir=tmp_path).cached and calls[0] == 1
    changed = _images(6, seed=2)
    changed[3] = changed[3].rotate(90)
    miss = calibrate_zero_shot(model, ReferenceSet.of_images("noise", changed), cache_dir=tmp_path)
    assert calls[0] == 2 and not miss.cached

    with torch.no_grad():
        model.clip.visual.conv1.weight[0, 0, 0, 0] += 0.5  # other weights in the image tower
    assert not calibrate_zero_shot(model, reference, cache_dir=tmp_path).cached and calls[0] == 3
    assert calibrate_zero_shot(model, reference, cache_dir=tmp_path).cached and calls[0] == 3

    for path in tmp_path.iterdir():  # a damaged cache file is recomputed, not trusted
        path.write_bytes(b"not safetensors")
    assert not calibrate_zero_shot(model, reference, cache_dir=tmp_path).cached and calls[0] == 4


def test_a_folder_with_a_corrupt_file_and_a_non_image(tiny_backbone, tmp_path):
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(_images(3, seed=4)):
        image.save(folder / ("sub" if i == 2 else "") / f"good{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"ignored")
    reference = folder_reference(folder)
    assert sorted(p.name for p in reference.items) == ["broken.jpg", "good0.png", "good1.png", "good2.png"]

    model = CapNet(tiny_backbone(), ODD_NAMES, zero_shot=True)
    feats = reference_features(model, reference, cache_dir=tmp_path / "cache")
    assert feats.features.shape[0] == 3 and feats.skipped == 1 and "broken.jpg" in feats.problems[0]
    result = calibrate_zero_shot(model, reference, cache_dir=tmp_path / "cache")
    assert result.cached and result.skipped == 1
    assert result.describe() == (
        f"zero-shot probabilities calibrated on 3 reference images (folder {folder}), "
        "1 unreadable file(s) skipped, prior 0.40"
    )

    scenes = choose_reference(folder, scenes=lambda: _images(2, seed=9))  # the user's folder comes first
    assert scenes.identity == reference.identity
    scenes = choose_reference(scenes=lambda: _images(2, seed=9))
    assert scenes.name == "synthetic-world scenes" and len(scenes.items) == 2

    _images(1, seed=5)[0].save(folder / "good1.png")  # an edited file: new identity
    assert folder_reference(folder).identity != reference.identity
    assert [p.name for p in folder_reference(folder, max_images=2).items] == ["broken.jpg", "good2.png"]

    with pytest.raises(CalibrationError, match="not found"):
        folder_reference(tmp_path / "missing")
    (tmp_path / "few").mkdir()
    _images(1, seed=6)[0].save(tmp_path / "few" / "a.png")
    with pytest.raises(CalibrationError, match="holds 1 image file"):
        folder_reference(tmp_path / "few")
    (tmp_path / "few" / "b.png").write_bytes(b"broken")
    with pytest.raises(CalibrationError, match="1 readable image"):
        reference_features(model, folder_reference(tmp_path / "few"), cache_dir=None)


def test_skimage_photos_whole_and_in_quarters(monkeypatch):
    from skimage import data

    reference = skimage_reference()
    assert len(reference.items) == 90 and reference.name == "skimage photos"
    whole = np.asarray(reference.open(("astronaut", "whole")))
    assert np.array_equal(whole, data.astronaut())
    quarter = np.asarray(reference.open(("astronaut", "bottom-right")))
    assert np.array_equal(quarter, data.astronaut()[256:, 256:])
    grey = reference.open(("camera", "top-left"))
    assert grey.mode == "RGB" and grey.size == (256, 256)

    assert choose_reference().identity == reference.identity

    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(CalibrationError, match="needs scikit-image"):
        skimage_reference()


def test_raw_logits_and_the_uncalibrated_mode(tiny_backbone, tmp_path):
    backbone = tiny_backbone()
    model = CapNet(backbone, ODD_NAMES, zero_shot=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scaled_cosines = backbone.model.logit_scale.exp() * (
            F.normalize(backbone.model.encode_image(x), dim=-1) @ model.text_features.T
        )
    result = calibrate_zero_shot(model, ReferenceSet.of_images("noise", _images(8, seed=7)), cache_dir=None)
    logits = model.predict_logits(x).numpy()
    assert not np.allclose(logits, scaled_cosines.numpy(), atol=1e-3)
    assert np.allclose(result.raw_logits(logits), scaled_cosines.numpy(), atol=1e-4)

    raw = uncalibrated(model)
    assert raw.describe().startswith("zero-shot scores uncalibrated")
    assert np.allclose(model.predict_logits(x).numpy(), scaled_cosines.numpy(), atol=1e-4)
    with pytest.raises(CalibrationError, match="zero-shot"):
        calibrate_zero_shot(CapNet(backbone, ODD_NAMES), _constructed_features(4))
