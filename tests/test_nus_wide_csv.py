"""NUS-WIDE as released with ASL: one CSV of image paths, bracketed label lists and train/val splits."""

from __future__ import annotations

import numpy as np
import pytest

from capnet.config import DataConfig
from capnet.data import DataError, read_nus_wide_csv
from capnet.data.sources import load_split
from capnet.labelsets import NUS_WIDE

ROWS = [
    ("images/0001_2124494179.jpg", "['clouds', 'sky']", "train"),
    ("images/0002_174174086.jpg", "[]", "train"),
    ("images/0003_1.jpg", "['animal', 'water', 'sky']", "val"),
    ("images/0004_2.jpg", '["zebra"]', "train"),
    ("images/0005_3.jpg", "['buildings']", "val"),
]


def write(tmp_path, rows=ROWS, header="filepath,label,split_name", index=False):
    lines = [("," if index else "") + header]
    for i, (path, label, split) in enumerate(rows):
        quoted = '"' + label.replace('"', '""') + '"'
        lines.append((f"{i}," if index else "") + f"{path},{quoted},{split}")
    csv = tmp_path / "nus_wid_data.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def expected(split: str, classes: list[str]) -> np.ndarray:
    """The label matrix written out by hand from ROWS."""
    chosen = [row for row in ROWS if row[2] == split]
    names = {
        "images/0001_2124494179.jpg": ["clouds", "sky"],
        "images/0002_174174086.jpg": [],
        "images/0003_1.jpg": ["animal", "water", "sky"],
        "images/0004_2.jpg": ["zebra"],
        "images/0005_3.jpg": ["buildings"],
    }
    return np.array([[int(c in names[path]) for c in classes] for path, _, _ in chosen], dtype=np.uint8)


@pytest.mark.parametrize("index", [False, True])
def test_reads_names_labels_and_splits(tmp_path, index):
    csv = write(tmp_path, index=index)
    train = read_nus_wide_csv(csv, tmp_path, "train")
    test = read_nus_wide_csv(csv, tmp_path, "test")  # the release calls it val
    classes = ["animal", "buildings", "clouds", "sky", "water", "zebra"]  # both splits, sorted
    assert train.class_names == test.class_names == classes
    assert train.image_ids == ["images/0001_2124494179.jpg", "images/0002_174174086.jpg", "images/0004_2.jpg"]
    assert train.paths[0] == tmp_path / "images" / "0001_2124494179.jpg"
    assert (train.labels == expected("train", classes)).all() and (
        test.labels == expected("val", classes)
    ).all()


def test_the_81_concepts_fix_the_order_and_load_split_reads_it(tmp_path):
    write(tmp_path)
    cfg = DataConfig(format="nus_wide", root=str(tmp_path), train="nus_wid_data.csv", test="nus_wid_data.csv",
                     class_names=list(NUS_WIDE))  # fmt: skip
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert len(train.class_names) == 81 and train.class_names == list(NUS_WIDE)
    assert (train.labels == expected("train", list(NUS_WIDE))).all() and len(test) == 2
    assert train.labels.sum() == 3 and train.labels[1].sum() == 0


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (ROWS, "path,labels,split", "must name filepath, label and split_name"),
        ([("a.jpg", "clouds", "train")], "filepath,label,split_name", "is not a [...] list"),
        ([("a.jpg", "['sky']", "minival")], "filepath,label,split_name", "neither train nor val"),
        ([("a.jpg", "['sky']", "train"), ("a.jpg", "['sky']", "train")], "filepath,label,split_name",
         "more than once"),
    ],
)  # fmt: skip
def test_malformed_files_are_one_line_errors(tmp_path, rows, header, message):
    csv = write(tmp_path, rows, header)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        read_nus_wide_csv(csv, tmp_path, "train")
    assert "\n" not in str(err.value)


def test_unknown_labels_against_given_classes(tmp_path):
    with pytest.raises(DataError, match="not among the classes: zebroid"):
        read_nus_wide_csv(write(tmp_path, [("a.jpg", "['zebroid']", "train")]), tmp_path, "train", NUS_WIDE)
