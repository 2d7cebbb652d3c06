"""Every app limit at its threshold and one step past it, through the function the app calls.

The limits come from app/limits.py: raising one there without meaning to makes these fail. The same
limits are driven once through the running app in tests/test_hostile.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import finetune as ft
from app import limits
from app.predict import parse_labels, read_uploads
from capnet.data import DataError, Records
from capnet.images import ImageTooLarge, load_image


def test_the_limits_are_the_documented_ones():
    assert limits.MAX_PIXELS == 40_000_000 and limits.MAX_IMAGES == 16 and limits.MAX_LABELS == 200
    assert limits.MAX_UPLOAD_BYTES == 20 * 2**20 and limits.MAX_FT_IMAGES == 300
    assert limits.MAX_EPOCHS == 20 and limits.MAX_SECONDS == 300


def test_forty_megapixels_accepted_one_row_more_refused(tmp_path):
    width = 8000
    height = limits.MAX_PIXELS // width
    exact, over = tmp_path / "exact.png", tmp_path / "over.png"
    Image.new("L", (width, height), 30).save(exact)
    Image.new("L", (width, height + 1), 30).save(over)
    images, problems = read_uploads([str(exact), str(over)])
    assert [name for name, _ in images] == ["exact.png"]
    assert problems == [
        f"over.png: too large ({width}x{height + 1} is {width * (height + 1) / 1e6:g} megapixels; "
        "at most 40 are allowed)"
    ]
    with pytest.raises(ImageTooLarge):
        load_image(over, max_pixels=limits.MAX_PIXELS)


def _pngs(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.new("RGB", (8, 8), (i, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def test_sixteen_images_accepted_the_seventeenth_named(tmp_path):
    paths = _pngs(tmp_path, limits.MAX_IMAGES + 1)
    images, problems = read_uploads(paths[: limits.MAX_IMAGES])
    assert len(images) == limits.MAX_IMAGES and problems == []
    images, problems = read_uploads(paths)
    assert len(images) == limits.MAX_IMAGES
    assert problems == ["at most 16 images per prediction: img16.png left out"]


def test_two_hundred_labels_accepted_one_more_refused():
    names = [f"class {i}" for i in range(limits.MAX_LABELS + 1)]
    assert len(parse_labels("Custom", ", ".join(names[:-1]))) == limits.MAX_LABELS
    with pytest.raises(ValueError, match="201 labels given; at most 200 are served"):
        parse_labels("Custom", ", ".join(names))


def _records(folder: Path, n: int, classes: int) -> Records:
    paths = [Path(p) for p in _pngs(folder, n)] if n <= 20 else [folder / f"x{i}.png" for i in range(n)]
    labels = np.zeros((n, classes), dtype=np.uint8)
    for i in range(n):
        labels[i, i % classes] = 1
    return Records([f"c{j}" for j in range(classes)], [p.stem for p in paths], paths, labels)


def test_three_hundred_fine_tune_images_accepted_one_more_refused(tmp_path):
    one = tmp_path / "one.png"
    Image.new("RGB", (8, 8), "red").save(one)
    n = limits.MAX_FT_IMAGES
    labels = np.eye(2, dtype=np.uint8)[np.arange(n + 1) % 2]
    records = Records(["a", "b"], [str(i) for i in range(n + 1)], [one] * (n + 1), labels)
    job = ft._checked(records.subset(np.arange(n)))
    assert len(job.records) == n and job.problems == []
    with pytest.raises(DataError, match="301 images; the app fine-tunes on at most 300"):
        ft._checked(records)


def test_two_hundred_fine_tune_classes_accepted_one_more_refused(tmp_path):
    one = tmp_path / "one.png"
    Image.new("RGB", (8, 8), "red").save(one)
    for classes, ok in ((limits.MAX_LABELS, True), (limits.MAX_LABELS + 1, False)):
        labels = np.eye(classes, dtype=np.uint8)
        records = Records(
            [f"c{j}" for j in range(classes)], [str(i) for i in range(classes)], [one] * classes, labels
        )
        if ok:
            assert len(ft._checked(records).records.class_names) == classes
        else:
            with pytest.raises(DataError, match="201 classes; the app fine-tunes at most 200"):
                ft._checked(records)


@pytest.mark.parametrize(
    "epochs, lr, ok",
    [
        (limits.MAX_EPOCHS, 0.003, True),
        (limits.MAX_EPOCHS + 1, 0.003, False),
        (1, 0.003, True),
        (0, 0.003, False),
        (2.5, 0.003, False),
        (3, limits.LR_MIN, True),
        (3, limits.LR_MIN / 2, False),
        (3, limits.LR_MAX, True),
        (3, limits.LR_MAX * 1.01, False),
        (3, -1.0, False),
        (3, 1e9, False),
        (3, float("nan"), False),
    ],
)
def test_fine_tune_numbers_at_their_bounds(epochs, lr, ok):
    if ok:
        ft.check_settings({"prompts"}, epochs, lr, "bce")
    else:
        with pytest.raises(DataError, match="epochs must be a whole number|learning rate must lie"):
            ft.check_settings({"prompts"}, epochs, lr, "bce")


def test_run_job_refuses_twenty_one_epochs_before_building_anything(tmp_path):
    built = []
    job = ft.Job(_records(tmp_path, 12, 2))
    updates = ft.run_job(
        job,
        lambda: built.append(1),
        parts={"prompts"},
        epochs=21,
        lr=0.003,
        loss="bce",
        workdir=tmp_path / "w",
    )
    with pytest.raises(DataError, match="from 1 to 20 \\(got 21\\)"):
        next(updates)
    assert built == []


def _jpeg(size, colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_large_images_are_reduced_while_decoding_to_what_the_model_needs():
    # JPEG: scaled inside the decoder (draft) by the largest power of two keeping the short side >= 512
    out = load_image(_jpeg((4800, 2400)), min_side=512)
    assert out.size == (1200, 600)
    r, g, b = out.getpixel((600, 300))
    assert abs(r - 200) < 8 and abs(g - 40) < 8 and abs(b - 40) < 8
    # PNG: reduced by a whole factor right after loading
    buf = io.BytesIO()
    Image.new("RGB", (5000, 1100), (10, 120, 250)).save(buf, format="PNG")
    out = load_image(buf.getvalue(), min_side=512)
    assert out.size == (2500, 550) and out.getpixel((5, 5)) == (10, 120, 250)
    # small images, and no min_side, come back at full size
    assert load_image(_jpeg((600, 400)), min_side=512).size == (600, 400)
    assert load_image(_jpeg((4800, 2400))).size == (4800, 2400)


def test_exif_rotation_survives_the_reduction():
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (4000, 2000), "red").save(buf, format="JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue(), min_side=512).size == (1000, 2000)


def test_the_demo_sweeps_gradios_cache(tiny_backbone):
    from app.models import ServedModels
    from app.ui import build_demo

    demo = build_demo(ServedModels(tiny_backbone(), "banner"))
    assert demo.delete_cache == limits.CACHE_SWEEP and limits.CACHE_SWEEP[1] <= 24 * 3600
