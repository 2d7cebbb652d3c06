"""Label readers: small files in the real on-disk formats, and the official VOC-LT / COCO-LT split files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from capnet.data import (
    DataError,
    Records,
    read_class_names,
    read_coco,
    read_csv,
    read_id_list,
    read_list_file,
    read_nus_wide,
    read_voc,
)
from capnet.labelsets import COCO
from tests.common import VOC_CLASSES, official_file


def _onehot(num_classes: int, *rows: list[int]) -> np.ndarray:
    out = np.zeros((len(rows), num_classes), dtype=np.uint8)
    for r, indices in enumerate(rows):
        out[r, indices] = 1
    return out


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- Records


def _records(n: int = 4) -> Records:
    return Records(
        class_names=["a", "b", "c"],
        image_ids=[f"img{i}" for i in range(n)],
        paths=[f"/x/img{i}.jpg" for i in range(n)],
        labels=np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]][:n], dtype=bool),
    )


def test_records_basics():
    recs = _records()
    assert len(recs) == 4 and recs.labels.dtype == np.uint8
    assert recs.class_freq.tolist() == [2, 2, 2]
    sub = recs.subset([3, 0])
    assert sub.image_ids == ["img3", "img0"] and sub.labels.tolist() == [[0, 1, 1], [1, 0, 1]]
    assert str(sub.paths[0]) == "/x/img3.jpg"
    assert recs.subset(np.array([False, True, True, False])).image_ids == ["img1", "img2"]
    assert len(recs.subset([])) == 0 and recs.subset([]).labels.shape == (0, 3)
    picked = recs.select_ids(["img2", "img1", "img3"])
    assert picked.image_ids == ["img2", "img1", "img3"]
    assert picked.labels.tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 1]]
    assert picked.class_freq.tolist() == [1, 2, 1]


def test_select_ids_unknown_lists_ten_then_count():
    recs = _records()
    with pytest.raises(DataError) as info:
        recs.select_ids(["img0"] + [f"nope{i}" for i in range(13)])
    message = _assert_one_line(info)
    assert isinstance(info.value, ValueError)
    assert "13 image ids" in message and "nope0" in message and "nope9" in message
    assert "nope10" not in message and "and 3 more" in message


def test_records_validation():
    with pytest.raises(DataError, match="2 image ids but 1 paths"):
        Records(["a"], ["x", "y"], ["x.jpg"], np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"shape \(2, 2\), expected \(2, 1\)"):
        Records(["a"], ["x", "y"], ["x.jpg", "y.jpg"], np.zeros((2, 2)))
    with pytest.raises(DataError, match="0 or 1.*y"):
        Records(["a"], ["x", "y"], ["x.jpg", "y.jpg"], np.array([[1], [2]]))


# -------------------------------------------------------------------------------------------------- VOC

_VOC_XML = """<annotation>
  <folder>VOC2012</folder>
  <filename>{id}.jpg</filename>
  <size><width>8</width><height>8</height><depth>3</depth></size>
{objects}</annotation>
"""


def _voc_object(name: str, difficult: int = 0) -> str:
    return (
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n    <difficult>{difficult}</difficult>\n"
        "    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>\n  </object>\n"
    )


def _make_voc(root, annotations: dict[str, list[tuple[str, int]]], splits: dict[str, str], year="2012"):
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        body = "".join(_voc_object(name, difficult) for name, difficult in objects)
        (base / "Annotations" / f"{image_id}.xml").write_text(_VOC_XML.format(id=image_id, objects=body))
    for split, text in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_bytes(text.encode())
    return base


def test_read_voc_counts_every_object(tmp_path):
    base = _make_voc(
        tmp_path,
        {
            "2008_000001": [("dog", 0), ("dog", 0), ("person", 1)],  # repeated object, difficult person
            "2008_000002": [("cat", 1)],  # only a difficult object
            "2008_000003": [("tvmonitor", 0), ("aeroplane", 0), ("bicycle", 1)],
            "2008_000004": [("sheep", 0)],  # not in the split file
        },
        {"trainval": "2008_000001\r\n2008_000002\r\n2008_000003\r\n\r\n", "val": "2008_000003\n"},
    )
    for root in (tmp_path, tmp_path / "VOCdevkit"):  # the devkit folder or its parent
        recs = read_voc(root)
        assert recs.class_names == VOC_CLASSES
        assert recs.image_ids == ["2008_000001", "2008_000002", "2008_000003"]
        # dog 11, person 14 / cat 7 / aeroplane 0, bicycle 1, tvmonitor 19
        np.testing.assert_array_equal(recs.labels, _onehot(20, [11, 14], [7], [0, 1, 19]))
        assert recs.paths[1] == base / "JPEGImages" / "2008_000002.jpg"
    val = read_voc(tmp_path, split="val")
    assert val.image_ids == ["2008_000003"] and val.class_freq.sum() == 3


def test_read_voc_unknown_names_and_missing_files(tmp_path):
    _make_voc(
        tmp_path,
        {"a1": [("dog", 0), ("doggo", 0)], "a2": [("Person", 0)], "a3": [("cat", 0)]},
        {"trainval": "a1\na2\na3\n", "test": "a3\nzz9\n"},
    )
    with pytest.raises(DataError) as info:
        read_voc(tmp_path)
    message = _assert_one_line(info)
    assert "'doggo'" in message and "'Person'" in message and "a1" in message and "a2" in message
    assert "'cat'" not in message and "'dog'" not in message
    with pytest.raises(DataError, match="1 annotation files missing.*zz9.xml"):
        read_voc(tmp_path, split="test")
    with pytest.raises(DataError, match="no VOC2007 folder"):
        read_voc(tmp_path, year="2007")


# ------------------------------------------------------------------------------------------------- COCO


def test_read_coco(tmp_path):
    data = {
        "info": {"description": "tiny"},
        "images": [
            {"id": 397133, "file_name": "000000397133.jpg", "width": 8, "height": 8},
            {"id": 37777, "file_name": "000000037777.jpg", "width": 8, "height": 8},
            {"id": 9, "file_name": "000000000009.jpg", "width": 8, "height": 8},  # no annotation
            {"id": 252219, "file_name": "000000252219.jpg", "width": 8, "height": 8},
        ],
        # Listed out of id order, with the gaps of real COCO ids.
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
        "annotations": [
            {"id": 1, "image_id": 397133, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1]},
            {"id": 2, "image_id": 397133, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1]},
            {"id": 3, "image_id": 397133, "category_id": 18, "iscrowd": 0, "bbox": [0, 0, 1, 1]},
            {"id": 4, "image_id": 37777, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 1, 1]},  # crowd
            {"id": 5, "image_id": 252219, "category_id": 90, "iscrowd": 0, "bbox": [0, 0, 1, 1]},
            {"id": 6, "image_id": 252219, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 1, 1]},
        ],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(data))
    recs = read_coco(path, tmp_path / "val2017")
    assert recs.class_names == ["person", "car", "dog", "toothbrush"]
    assert recs.image_ids == ["397133", "37777", "9", "252219"]
    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(recs.labels, expected)
    assert recs.paths[3] == tmp_path / "val2017" / "000000252219.jpg"

    data["annotations"].append({"id": 7, "image_id": 9, "category_id": 44, "iscrowd": 0})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown category ids.*44"):
        read_coco(path, tmp_path)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="annotations, categories"):
        read_coco(path, tmp_path)


# --------------------------------------------------------------------------------------------- NUS-WIDE


def _make_nus(root, concepts, split_lists: dict[str, list[str]], labels: dict[str, dict[str, list[int]]]):
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_bytes("".join(f"{c}\r\n" for c in concepts).encode())
    for split, rels in split_lists.items():
        (root / "ImageList" / f"{split}Imagelist.txt").write_bytes("".join(f"{r}\r\n" for r in rels).encode())
        for concept in concepts:
            values = "".join(f"{v} \n" for v in labels[split][concept])
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{split}.txt").write_text(values)


def test_read_nus_wide(tmp_path):
    concepts = ["airport", "animal", "beach", "zebra"]
    lists = {
        "Train": [r"actor\0001_2124494179.jpg", r"beach\0002_1111.jpg", r"zoo\0003_2222.jpg"],
        "Test": [r"airport\0004_3333.jpg"],
    }
    labels = {
        "Train": {"airport": [0, 0, 0], "animal": [1, 0, 1], "beach": [0, 1, 0], "zebra": [0, 0, 1]},
        "Test": {"airport": [1], "animal": [0], "beach": [0], "zebra": [0]},
    }
    _make_nus(tmp_path, concepts, lists, labels)
    train = read_nus_wide(tmp_path)
    assert train.class_names == concepts
    assert train.image_ids == ["actor/0001_2124494179.jpg", "beach/0002_1111.jpg", "zoo/0003_2222.jpg"]
    assert train.paths[0] == tmp_path / "Flickr" / "actor" / "0001_2124494179.jpg"
    np.testing.assert_array_equal(train.labels, _onehot(4, [1], [2], [1, 3]))
    test = read_nus_wide(tmp_path, split="Test")
    assert test.image_ids == ["airport/0004_3333.jpg"] and test.labels.tolist() == [[1, 0, 0, 0]]

    short = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_beach_Train.txt"
    short.write_text("0\n1\n")
    with pytest.raises(DataError, match="Labels_beach_Train.txt has 2 values for 3 images"):
        read_nus_wide(tmp_path)
    with pytest.raises(DataError, match="'Train' or 'Test'"):
        read_nus_wide(tmp_path, split="val")


# ------------------------------------------------------------------------------------ list / CSV / ids


def test_read_list_file(tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text(
        "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg 14 4 19\n"
        "train2017/000000000009.jpg \n"  # no label
        "\n"
        "sub/img_b.png 2 2 0 \n"  # repeated index
    )
    recs = read_list_file(
        lst, tmp_path / "does-not-exist", ["c0", "c1", "c2", "c3", "c4"] + [f"x{i}" for i in range(15)]
    )
    assert recs.image_ids == ["2008_000023", "000000000009", "img_b"]
    assert recs.paths[2] == tmp_path / "does-not-exist" / "sub" / "img_b.png"
    np.testing.assert_array_equal(recs.labels, _onehot(20, [4, 14, 19], [], [0, 2]))

    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0 1\nb.jpg 3\nc.jpg -1\nd.jpg 2\n")
    with pytest.raises(DataError) as info:
        read_list_file(bad, tmp_path, ["p", "q", "r"])
    message = _assert_one_line(info)
    assert "2 lines" in message and "line 2: 'b.jpg 3'" in message and "line 3: 'c.jpg -1'" in message
    assert "a.jpg" not in message and "d.jpg" not in message


def test_read_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,labels\nimgs/one.jpg,dog;cat\nimgs/two.jpg,\nimgs/three.jpg, traffic light \n")
    recs = read_csv(path, tmp_path)
    assert recs.class_names == ["cat", "dog", "traffic light"]
    assert recs.image_ids == ["one", "two", "three"] and recs.paths[0] == tmp_path / "imgs" / "one.jpg"
    np.testing.assert_array_equal(recs.labels, _onehot(3, [0, 1], [], [2]))

    fixed = read_csv(path, tmp_path, class_names=["traffic light", "dog", "cat", "bird"])
    np.testing.assert_array_equal(fixed.labels, _onehot(4, [1, 2], [], [0]))

    path.write_text("path,labels\na.jpg,dog\nb.jpg,dgo;cat\nc.jpg,cat\nd.jpg,Cat;bird\n")
    with pytest.raises(DataError) as info:
        read_csv(path, tmp_path, class_names=["cat", "dog", "bird"])
    message = _assert_one_line(info)
    assert "2 unknown class names" in message and "'dgo'" in message and "'Cat'" in message
    assert "line 3" in message and "line 5" in message and "line 2" not in message

    path.write_text("file,label\na.jpg,dog\n")
    with pytest.raises(DataError, match="'path' and 'labels'"):
        read_csv(path, tmp_path)


def test_read_id_list_and_class_names(tmp_path):
    ids = tmp_path / "img_id.pkl"
    ids.write_text("554625\n 000000118113 \n\n2008_000023\r\n13172")
    assert read_id_list(ids) == ["554625", "000000118113", "2008_000023", "13172"]
    real_pickle = tmp_path / "real.pkl"
    real_pickle.write_bytes(pickle.dumps([554625, 118113]))
    with pytest.raises(DataError, match="not a text id list"):
        read_id_list(real_pickle)

    names = tmp_path / "labels.txt"
    names.write_bytes(b"person 0\r\ntraffic light 2 \r\nbicycle 1 \r\nhair drier 3")
    assert read_class_names(names) == ["person", "bicycle", "traffic light", "hair drier"]
    names.write_text("person 0\ncar 2\n")
    with pytest.raises(DataError, match="missing 1"):
        read_class_names(names)


# --------------------------------------------------------------------------- the official split files


def _pickle(path):
    with open(path, "rb") as handle:  # trusted shared test file; the library itself never unpickles
        return pickle.load(handle)


def test_official_voc_lt_lists_match_class_freq(tmp_path):
    names = read_class_names(official_file("voc-lt", "voc_labels.txt"))
    assert names == VOC_CLASSES  # one line of the file ends with a space
    nowhere = tmp_path / "no-images-here"
    train = read_list_file(official_file("voc-lt", "voc_lt_train.txt"), nowhere, names)
    ids = read_id_list(official_file("voc-lt", "img_id.txt"))
    assert len(ids) == 1142 and train.image_ids == ids  # same order
    assert train.paths[0] == nowhere / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{ids[0]}.jpg"
    stats = _pickle(official_file("voc-lt", "class_freq.pkl"))
    np.testing.assert_array_equal(train.labels, np.stack(stats["gt_labels"]))
    np.testing.assert_array_equal(train.class_freq, np.asarray(stats["class_freq"]))
    test = read_list_file(official_file("voc-lt", "voc_lt_test.txt"), nowhere, names)
    assert len(test) == 4952 and test.labels.sum(axis=1).min() >= 1
    assert not nowhere.exists()


def test_official_coco_lt_lists_match_class_freq(tmp_path):
    names = read_class_names(official_file("coco-lt", "coco_labels.txt"))
    assert names == list(COCO) and "traffic light" in names
    nowhere = tmp_path / "no-images-here"
    train = read_list_file(official_file("coco-lt", "coco_lt_train.txt"), nowhere, names)
    ids = read_id_list(official_file("coco-lt", "img_id.pkl"))  # a text file despite its name
    assert len(ids) == 1909 and len(train) == 1909
    assert train.image_ids != ids  # zero-padded stems in another order: match by integer id
    row_of = {int(stem): r for r, stem in enumerate(train.image_ids)}
    assert sorted(row_of) == sorted(int(i) for i in ids)
    stats = _pickle(official_file("coco-lt", "class_freq.pkl"))
    reordered = train.labels[[row_of[int(i)] for i in ids]]
    np.testing.assert_array_equal(reordered, np.stack(stats["gt_labels"]))
    np.testing.assert_array_equal(train.class_freq, np.asarray(stats["class_freq"]))
    test = read_list_file(official_file("coco-lt", "coco_lt_test.txt"), nowhere, names)
    assert len(test) == 5000 and int((test.labels.sum(axis=1) == 0).sum()) == 48
    assert not nowhere.exists()


def test_subset_rejects_bad_indices():
    recs = _records()
    with pytest.raises(DataError, match="2 indices out of range for 4 records: 4, -5"):
        recs.subset([0, 4, -5])
    with pytest.raises(DataError, match="boolean mask"):
        recs.subset(np.array([True, False]))
    with pytest.raises(DataError, match="class names given more than once: a"):
        Records(["a", "b", "a"], [], [], np.zeros((0, 3)))
