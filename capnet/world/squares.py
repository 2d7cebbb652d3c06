"""Small learnable multi-label data (coloured squares) in the real on-disk formats, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

# Each class is a coloured square: learnable from pixels even by a small random image tower.
COLOURS = {
    "aeroplane": (220, 30, 30),
    "bicycle": (30, 200, 30),
    "bird": (30, 30, 220),
    "boat": (230, 220, 20),
    "bottle": (20, 210, 220),
}
FREQ = {"aeroplane": 0.6, "bicycle": 0.4, "bird": 0.25, "boat": 0.12, "bottle": 0.06}


def scene_labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FREQ))) < np.array(list(FREQ.values()))).astype(np.uint8)
    empty = labels.sum(1) == 0
    labels[empty, rng.integers(0, len(FREQ), empty.sum())] = 1
    return labels


def draw(labels: np.ndarray, seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
    pen = ImageDraw.Draw(image)
    for c in np.flatnonzero(labels):
        x, y = rng.integers(0, size - 20, 2)
        pen.rectangle([int(x), int(y), int(x) + 20, int(y) + 20], fill=list(COLOURS.values())[c])
    return image


def write_voc(root: Path, n_train: int = 60, n_test: int = 40) -> Path:
    """A VOCdevkit tree: VOC2012 trainval (the pool) and VOC2007 test, as the benchmark reads them."""
    names = list(COLOURS)
    for year, split, n, seed in (("2012", "trainval", n_train, 1), ("2007", "test", n_test, 2)):
        base = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        labels = scene_labels(n, seed)
        ids = [f"{year}_{i:06d}" for i in range(n)]
        for i, (image_id, row) in enumerate(zip(ids, labels)):
            draw(row, seed * 10_000 + i).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            ann = ET.Element("annotation")
            ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
            for c in np.flatnonzero(row):
                obj = ET.SubElement(ann, "object")
                ET.SubElement(obj, "name").text = names[c]
                ET.SubElement(obj, "difficult").text = str(int(i % 7 == 0))
            ET.ElementTree(ann).write(base / "Annotations" / f"{image_id}.xml")
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


def write_coco(root: Path, n_train: int = 60, n_test: int = 40) -> Path:
    """COCO layout: annotations/instances_{train,val}2017.json plus image folders; ids are not contiguous."""
    names = list(COLOURS)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 3 * k + 1, "name": n} for k, n in enumerate(names)]
    for split, n, seed in (("train2017", n_train, 3), ("val2017", n_test, 4)):
        (root / split).mkdir(parents=True, exist_ok=True)
        labels = scene_labels(n, seed)
        images, anns = [], []
        for i, row in enumerate(labels):
            image_id = 1000 + 7 * i
            file_name = f"{image_id:012d}.jpg"
            draw(row, seed * 10_000 + i).save(root / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": 48, "height": 48})
            for c in np.flatnonzero(row):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": categories[c]["id"],
                        "iscrowd": 0,
                        "bbox": [0, 0, 16, 16],
                        "area": 256,
                    }
                )
        doc = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def write_csv_dataset(root: Path, n: int = 80, seed: int = 5) -> Path:
    """Images plus labels.csv (`path,labels`, names separated by ';'): the format users fine-tune with."""
    names = list(COLOURS)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    lines = ["path,labels"]
    for i, row in enumerate(scene_labels(n, seed)):
        path = f"images/{i:04d}.jpg"
        draw(row, seed * 10_000 + i).save(root / path, quality=95)
        lines.append(f"{path},{';'.join(names[c] for c in np.flatnonzero(row))}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv
