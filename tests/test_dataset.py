"""ImageDataset items and the up-front image check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from capnet.data import DataError, ImageDataset, Records, check_images

CLASSES = ["cat", "dog", "car"]


def _records(tmp_path, names: list[str], rows: list[list[int]]) -> Records:
    labels = np.zeros((len(names), len(CLASSES)), dtype=np.uint8)
    for r, indices in enumerate(rows):
        labels[r, indices] = 1
    return Records(
        class_names=CLASSES,
        image_ids=[name.split(".")[0] for name in names],
        paths=[tmp_path / name for name in names],
        labels=labels,
    )


def _write_images(tmp_path) -> list[str]:
    Image.new("RGB", (20, 12), (200, 10, 10)).save(tmp_path / "rgb.jpg")
    Image.new("L", (10, 10), 90).save(tmp_path / "grey.jpg")
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    return ["rgb.jpg", "grey.jpg", "cmyk.jpg", "deep.png"]


def test_items_are_rgb_tensors_with_label_vectors(tmp_path):
    names = _write_images(tmp_path)
    recs = _records(tmp_path, names, [[0], [1, 2], [], [0, 1, 2]])
    plain = ImageDataset(recs)
    assert len(plain) == 4 and plain.class_names == CLASSES
    image, label, image_id = plain[0]
    assert image.shape == (3, 12, 20) and image.dtype == torch.float32
    assert image_id == "rgb" and label.dtype == torch.float32 and label.tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 10, 10]) / 255, atol=0.03)

    # Greyscale, CMYK and 16-bit files come out as three RGB channels.
    grey, label, _ = plain[1]
    assert grey.shape == (3, 10, 10) and label.tolist() == [0.0, 1.0, 1.0]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    cmyk, _, _ = plain[2]
    assert cmyk.shape == (3, 10, 12) and cmyk[0].min() > 0.9 and cmyk[1:].max() < 0.1  # red
    deep, label, _ = plain[3]
    assert deep.shape == (3, 2, 2) and deep[0, 1, 1] == 1.0 and deep[0, 0, 0] == 0.0
    assert label.tolist() == [1.0, 1.0, 1.0]

    resize = T.Compose([T.Resize((16, 16)), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
    images, labels, ids = next(iter(DataLoader(ImageDataset(recs, resize), batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and list(ids) == ["rgb", "grey", "cmyk", "deep"]
    np.testing.assert_array_equal(labels.numpy(), recs.labels.astype(np.float32))


def test_multi_view_transform(tmp_path):
    names = _write_images(tmp_path)[:2]
    recs = _records(tmp_path, names, [[2], [0]])
    resize = T.Compose([T.Resize((8, 8)), T.ToImage(), T.ToDtype(torch.float32, scale=True)])

    def two_views(image):
        view = resize(image)
        return torch.stack([view, view.flip(-1)])

    images, labels, _ = next(iter(DataLoader(ImageDataset(recs, two_views), batch_size=2)))
    assert images.shape == (2, 2, 3, 8, 8) and labels.tolist() == [[0, 0, 1], [1, 0, 0]]


def test_missing_file_in_dataset_names_it(tmp_path):
    recs = _records(tmp_path, ["absent.jpg"], [[0]])
    with pytest.raises(DataError, match="'absent'.*file not found"):
        ImageDataset(recs)[0]


def _bad_set(tmp_path) -> Records:
    Image.new("RGB", (32, 32), "green").save(tmp_path / "good1.jpg")
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "good2.png")
    data = (tmp_path / "good1.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.jpg").write_text("not an image at all")
    names = ["good1.jpg", "missing.jpg", "half.jpg", "good2.png", "notes.jpg"]
    return _records(tmp_path, names, [[0], [1], [2], [0, 1], []])


@pytest.mark.parametrize("workers", [1, 4])
def test_check_images_reports_or_skips(tmp_path, workers):
    recs = _bad_set(tmp_path)
    with pytest.raises(DataError) as info:
        check_images(recs, num_workers=workers)
    message = str(info.value)
    assert "\n" not in message and "3 of 5 images" in message
    assert "missing.jpg: file not found" in message
    assert "half.jpg: corrupt or truncated" in message and "notes.jpg: not an image" in message
    assert "good1" not in message and "good2" not in message

    kept, problems = check_images(recs, skip_bad=True, num_workers=workers)
    assert len(problems) == 3 and kept.image_ids == ["good1", "good2"]
    assert kept.labels.tolist() == [[1, 0, 0], [1, 1, 0]]
    assert len(recs) == 5  # the input is left alone

    same, none = check_images(kept)
    assert none == [] and same.image_ids == ["good1", "good2"]
    _, too_big = check_images(kept, skip_bad=True, max_pixels=500)
    assert len(too_big) == 1 and "good1.jpg" in too_big[0] and "megapixels" in too_big[0]


def test_check_images_lists_ten_then_count(tmp_path):
    recs = _records(tmp_path, [f"gone{i:02d}.jpg" for i in range(12)], [[0]] * 12)
    with pytest.raises(DataError) as info:
        check_images(recs)
    message = str(info.value)
    assert "12 of 12 images" in message and "gone09.jpg" in message
    assert "gone10.jpg" not in message and "and 2 more" in message
