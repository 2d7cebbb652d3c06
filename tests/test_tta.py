"""Checks capnet.tta views, TTA averaging in CapNet.predict_logits and template ensembling in capnet.text.

References are written independently here: PIL resize/crop/mirror arithmetic for the views, open_clip's own
preprocess for the single view, a per-view loop for the TTA mean and open_clip's own ``encode_text`` for
the template ensemble.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from capnet.model import CapNet
from capnet.text import ENSEMBLE_TEMPLATES, resolve_templates, template_features
from capnet.tta import FiveCropViews, SingleView, view_transform

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Distinct corner colours: top-left, top-right, bottom-left, bottom-right.
QUADRANT_COLOURS = {
    "tl": (255, 0, 0),
    "tr": (0, 255, 0),
    "bl": (0, 0, 255),
    "br": (255, 255, 0),
}


def quadrant_image(width: int, height: int) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    hw, hh = width // 2, height // 2
    arr[:hh, :hw] = QUADRANT_COLOURS["tl"]
    arr[:hh, hw:] = QUADRANT_COLOURS["tr"]
    arr[hh:, :hw] = QUADRANT_COLOURS["bl"]
    arr[hh:, hw:] = QUADRANT_COLOURS["br"]
    return Image.fromarray(arr, "RGB")


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)


def unnormalise(view: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) values in [0, 1]."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (view * std + mean).permute(1, 2, 0).numpy()


def pil_to_normalised(image: Image.Image) -> torch.Tensor:
    """Independent ToTensor + Normalize: uint8 HWC -> float CHW, (x / 255 - mean) / std."""
    arr = np.asarray(image, dtype=np.float64) / 255.0
    arr = (arr - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(arr).permute(2, 0, 1).float()


def reference_five_crops(image: Image.Image, size: int, flips: bool) -> torch.Tensor:
    """PIL only: short side to round(size * 248 / 224) (bicubic), then the 4 corners + centre boxes."""
    image = image.convert("RGB")
    w, h = image.size
    short = round(size * 248 / 224)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = image.resize((nw, nh), Image.BICUBIC)
    cx, cy = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    boxes = [(0, 0), (nw - size, 0), (0, nh - size), (nw - size, nh - size), (cx, cy)]
    crops = [resized.crop((x, y, x + size, y + size)) for x, y in boxes]
    if flips:
        crops += [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]
    return torch.stack([pil_to_normalised(c) for c in crops])


def nearest_colour_fractions(rgb01: np.ndarray) -> dict[str, float]:
    """Fraction of pixels whose nearest quadrant colour is each corner's colour."""
    names = list(QUADRANT_COLOURS)
    palette = np.array([QUADRANT_COLOURS[n] for n in names], dtype=np.float64) / 255.0
    dist = ((rgb01[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    nearest = dist.argmin(-1)
    return {n: float((nearest == i).mean()) for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- five crops


@pytest.mark.parametrize("flips, expected", [(False, 5), (True, 10)])
def test_five_crop_view_count_and_shape(flips, expected):
    tf = FiveCropViews(32, MEAN, STD, flips=flips)
    views = tf(noise_image(90, 60))
    assert tf.num_views == expected
    assert views.shape == (expected, 3, 32, 32)
    assert views.dtype == torch.float32


@pytest.mark.parametrize("size", [32, 24])  # 24 * 248/224 = 26.57: round gives 27, truncation 26
@pytest.mark.parametrize("width, height", [(128, 64), (64, 128)])
@pytest.mark.parametrize("flips", [False, True])
def test_five_crop_matches_pil_reference(size, width, height, flips):
    image = noise_image(width, height, seed=size + width)
    got = FiveCropViews(size, MEAN, STD, flips=flips)(image)
    want = reference_five_crops(image, size, flips)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_five_crop_resize_uses_rounded_short_side():
    # The right and bottom crops end at the resized image's far edges, so their content pins down the
    # resized size: 27 x 54 (rounded), not 26 x 52 (truncated) or 24 x 48 (no enlargement).
    size = 24
    short = round(size * 248 / 224)
    assert short == 27
    image = noise_image(200, 100, seed=3)
    got = FiveCropViews(size, MEAN, STD)(image)
    resized = image.resize((2 * short, short), Image.BICUBIC)
    right = pil_to_normalised(resized.crop((2 * short - size, 0, 2 * short, size)))
    bottom = pil_to_normalised(resized.crop((0, short - size, size, short)))
    torch.testing.assert_close(got[1], right, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], bottom, atol=1e-5, rtol=0)


def test_five_crops_are_corners_and_centre_by_colour():
    # 128x64 -> 70x35 for size 32: quadrant borders at x = 35, y = 17.5.
    size = 32
    views = FiveCropViews(size, MEAN, STD)(quadrant_image(128, 64))
    tl, tr, bl, br, centre = (unnormalise(v) for v in views)
    tol = 2 / 255
    # Each corner crop holds its own corner's colour at the matching corner pixel.
    np.testing.assert_allclose(tl[0, 0], np.array(QUADRANT_COLOURS["tl"]) / 255, atol=tol)
    np.testing.assert_allclose(tr[0, -1], np.array(QUADRANT_COLOURS["tr"]) / 255, atol=tol)
    np.testing.assert_allclose(bl[-1, 0], np.array(QUADRANT_COLOURS["bl"]) / 255, atol=tol)
    np.testing.assert_allclose(br[-1, -1], np.array(QUADRANT_COLOURS["br"]) / 255, atol=tol)
    # Left crops (x 0..31) never reach the right half (x >= 35), and vice versa; the top crops are mostly
    # top colour (rows 0..17 of 32), the bottom crops mostly bottom colour.
    f_tl, f_tr = nearest_colour_fractions(tl), nearest_colour_fractions(tr)
    f_bl, f_br = nearest_colour_fractions(bl), nearest_colour_fractions(br)
    assert f_tl["tr"] == f_tl["br"] == 0.0 and f_tl["tl"] > f_tl["bl"] > 0.3
    assert f_tr["tl"] == f_tr["bl"] == 0.0 and f_tr["tr"] > f_tr["br"] > 0.3
    assert f_bl["tr"] == f_bl["br"] == 0.0 and f_bl["bl"] > f_bl["tl"] > 0.3
    assert f_br["tl"] == f_br["bl"] == 0.0 and f_br["br"] > f_br["tr"] > 0.3
    # The centre crop (x 19..50, y 2..33) is split evenly between the four colours.
    f_c = nearest_colour_fractions(centre)
    for name in QUADRANT_COLOURS:
        assert f_c[name] == pytest.approx(0.25, abs=0.04), (name, f_c)


def test_flipped_views_are_horizontal_mirrors_of_the_crops():
    image = noise_image(96, 64, seed=7)
    plain = FiveCropViews(32, MEAN, STD, flips=False)(image)
    views = FiveCropViews(32, MEAN, STD, flips=True)(image)
    torch.testing.assert_close(views[:5], plain, atol=0, rtol=0)
    for i in range(5):
        torch.testing.assert_close(views[5 + i], plain[i].flip(-1), atol=0, rtol=0)
        assert not torch.equal(views[5 + i], plain[i])  # noise is not left-right symmetric


def test_flipped_quadrant_crop_swaps_left_and_right_colours():
    views = FiveCropViews(32, MEAN, STD, flips=True)(quadrant_image(128, 64))
    flipped_tl = unnormalise(views[5])
    # The mirrored top-left crop shows the top-left colour at its top-RIGHT pixel.
    np.testing.assert_allclose(flipped_tl[0, -1], np.array(QUADRANT_COLOURS["tl"]) / 255, atol=2 / 255)


# ----------------------------------------------------------------------------- single view


def test_single_view_equals_open_clip_preprocess(tiny_backbone):
    backbone = tiny_backbone()
    tf = SingleView(backbone.image_size, backbone.mean, backbone.std)
    # RGB and greyscale only: for RGBA and palette images open_clip resizes before converting to RGB
    # (alpha-premultiplied / nearest-neighbour resampling), SingleView converts first, so they differ.
    for width, height, seed, mode in [(75, 50, 1, "RGB"), (41, 97, 2, "RGB"), (60, 45, 3, "L")]:
        image = noise_image(width, height, seed=seed, mode=mode)
        want = backbone.preprocess(image)
        got = tf(image)
        assert got.shape == want.shape == (3, 32, 32)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_single_view_matches_pil_reference():
    image = noise_image(80, 50, seed=4)
    resized = image.resize((int(32 * 80 / 50), 32), Image.BICUBIC)  # 51 x 32
    left = int(round((resized.width - 32) / 2))
    want = pil_to_normalised(resized.crop((left, 0, left + 32, 32)))
    torch.testing.assert_close(SingleView(32, MEAN, STD)(image), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_greyscale_and_rgba_inputs_give_three_channels(mode):
    image = noise_image(60, 40, seed=5, mode=mode)
    single = SingleView(32, MEAN, STD)(image)
    views = FiveCropViews(32, MEAN, STD, flips=True)(image)
    assert single.shape == (3, 32, 32)
    assert views.shape == (10, 3, 32, 32)
    rgb = image.convert("RGB")
    torch.testing.assert_close(single, SingleView(32, MEAN, STD)(rgb), atol=0, rtol=0)
    torch.testing.assert_close(views, reference_five_crops(rgb, 32, flips=True), atol=1e-5, rtol=0)
    if mode == "L":
        raw = unnormalise(single)
        np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-6)
        np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-6)


def test_view_transform_dispatch():
    assert isinstance(view_transform(32, MEAN, STD), SingleView)
    five = view_transform(32, MEAN, STD, tta=True, flips=True)
    assert isinstance(five, FiveCropViews) and five.num_views == 10


# ----------------------------------------------------------------------------- TTA averaging


def _trained_looking(model: CapNet, seed: int = 1) -> CapNet:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_predict_logits_averages_views(tiny_backbone):
    model = _trained_looking(CapNet(tiny_backbone(), ["cat", "dog", "traffic light"])).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 3, 32, 32, generator=gen)

    got = model.predict_logits(images)
    assert got.shape == (2, 3)

    per_view = torch.stack([model.predict_logits(images[:, v]) for v in range(images.shape[1])], dim=1)
    torch.testing.assert_close(got, per_view.mean(dim=1), atol=1e-5, rtol=0)

    # Explicit formula, view by view: s * cos(v, f_c) + b_c, then the mean over views.
    with torch.no_grad():
        classes = F.normalize(model.class_features(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100.0)
        total = torch.zeros(2, 3)
        for v in range(images.shape[1]):
            feats = F.normalize(model.clip.encode_image(images[:, v]), dim=-1)
            total += scale * feats @ classes.T + model.class_bias
    torch.testing.assert_close(got, total / images.shape[1], atol=1e-5, rtol=0)
    # The views really differ, so averaging is not vacuous, and images are not mixed up.
    assert not torch.allclose(per_view[:, 0], per_view[:, 1], atol=1e-3)
    assert not torch.allclose(got[0], got[1], atol=1e-3)


# ----------------------------------------------------------------------------- template ensembling


def _reference_template_features(clip, tokenizer, names, templates) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for name in names:
            tokens = tokenizer([t.format(name) for t in templates])
            per_template = F.normalize(clip.encode_text(tokens).float(), dim=-1)
            out.append(F.normalize(per_template.mean(0), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize(
    "templates",
    [ENSEMBLE_TEMPLATES, ("a photo of a {}.", "{} in the wild, seen from far away at dusk", "{}")],
)
def test_template_features_match_open_clip_encode_text(tiny_backbone, templates):
    backbone = tiny_backbone()
    names = ["cat", "traffic light", "a very long and unusual class name indeed"]
    got = template_features(backbone.model, backbone.tokenizer, names, templates)
    want = _reference_template_features(backbone.model, backbone.tokenizer, names, templates)
    assert got.shape == (len(names), backbone.embed_dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(names)), atol=1e-6, rtol=0)
    # Ensembling matters: the average differs from the first template alone.
    single = _reference_template_features(backbone.model, backbone.tokenizer, names, templates[:1])
    assert not torch.allclose(got, single, atol=1e-3)


def test_resolve_templates():
    assert resolve_templates("ensemble") == ENSEMBLE_TEMPLATES
    assert resolve_templates("a {} photo") == ("a {} photo",)
    assert resolve_templates(["a {}", "the {}."]) == ("a {}", "the {}.")
    for bad in ["a photo", "{} and {}", ["a {}", "no slot"], [], "a {0}"]:
        with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
            resolve_templates(bad)
