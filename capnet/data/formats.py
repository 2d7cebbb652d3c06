"""Readers for the on-disk label formats of VOC, COCO, NUS-WIDE and the long-tailed split files.

Every reader returns :class:`Records` and reports bad input as a one-line :class:`DataError`. None of them
opens an image: use :func:`capnet.data.check_images` for that.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from capnet.data.records import DataError, Records, one_line, summarize
from capnet.labelsets import VOC


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{what} {path} is not a UTF-8 text file") from None


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of every non-blank line; handles CRLF and a missing final newline."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _reject_repeated_paths(paths: Sequence[Path], source: Path) -> None:
    seen: set[Path] = set()
    repeated: list[str] = []
    for path in paths:
        if path in seen:
            repeated.append(str(path))
        seen.add(path)
    if repeated:
        raise DataError(f"{source}: {len(repeated)} images listed more than once: {summarize(repeated)}")


# ---------------------------------------------------------------------------------------------- VOC


def _voc_year_dir(devkit_root: Path, year: str) -> Path:
    for candidate in (devkit_root / f"VOC{year}", devkit_root / "VOCdevkit" / f"VOC{year}"):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"no VOC{year} folder in {devkit_root}: give the VOCdevkit folder or its parent "
        f"(expected VOCdevkit/VOC{year}/Annotations, ImageSets, JPEGImages)"
    )


def read_voc(devkit_root: str | Path, year: str = "2012", split: str = "trainval") -> Records:
    """PASCAL VOC image-level labels from a VOCdevkit tree.

    Reads ``VOCdevkit/VOC{year}/ImageSets/Main/{split}.txt`` (one image id per line) and, for each id,
    ``Annotations/{id}.xml``; the image is ``JPEGImages/{id}.jpg``. Every ``<object>`` is a positive for its
    class, "difficult" ones included. Classes are the 20 VOC classes in alphabetical order.
    ``devkit_root`` may be the VOCdevkit folder or the folder that contains it.
    """
    year_dir = _voc_year_dir(Path(devkit_root), str(year))
    id_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    entries = _lines(_read_text(id_file, f"VOC{year} split file"))
    malformed = [f"line {number}: {one_line(line)!r}" for number, line in entries if len(line.split()) != 1]
    if malformed:
        raise DataError(
            f"{id_file}: expected one image id per line; {len(malformed)} lines differ: "
            f"{summarize(malformed)}"
        )
    image_ids = [line for _, line in entries]
    class_index = {name: c for c, name in enumerate(VOC)}
    labels = np.zeros((len(image_ids), len(VOC)), dtype=np.uint8)
    missing: list[str] = []
    unreadable: list[str] = []
    unknown: dict[str, list[str]] = {}
    for row, image_id in enumerate(image_ids):
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            missing.append(xml_path.name)
            continue
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as exc:
            unreadable.append(f"{xml_path.name} ({one_line(exc)})")
            continue
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name in class_index:
                labels[row, class_index[name]] = 1
            else:
                unknown.setdefault(name or "<empty>", []).append(image_id)
    annotations = year_dir / "Annotations"
    if missing:
        raise DataError(f"{len(missing)} annotation files missing in {annotations}: {summarize(missing)}")
    if unreadable:
        raise DataError(f"{len(unreadable)} annotation files are not valid XML: {summarize(unreadable)}")
    if unknown:
        described = [f"{name!r} (in {summarize(ids, 3)})" for name, ids in sorted(unknown.items())]
        raise DataError(
            f"{annotations}: {len(unknown)} object names are not VOC classes: {summarize(described)}"
        )
    paths = [year_dir / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids]
    return Records(class_names=list(VOC), image_ids=image_ids, paths=paths, labels=labels)


# --------------------------------------------------------------------------------------------- COCO


def read_coco(annotations_json: str | Path, image_dir: str | Path) -> Records:
    """COCO image-level labels from an ``instances_*.json`` file.

    Classes are the json's categories ordered by category id (80 for COCO 2014/2017, ids 1..90 with gaps).
    Every annotation is a positive for its category, ``iscrowd`` ones included. Images without any
    annotation are kept with an all-zero label row. ``image_id`` is the COCO integer id as a string, in the
    json's image order; the image is ``image_dir / file_name``.
    """
    json_path = Path(annotations_json)
    try:
        data = json.loads(_read_text(json_path, "COCO annotation file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{json_path} is not valid JSON: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: expected a COCO instances object, found a {type(data).__name__}")
    absent = [key for key in ("images", "annotations", "categories") if key not in data]
    if absent:
        raise DataError(f"{json_path} lacks the COCO keys {', '.join(absent)} (is it an instances_*.json?)")
    try:
        categories = sorted(((int(c["id"]), str(c["name"])) for c in data["categories"]), key=lambda x: x[0])
        images = [(int(image["id"]), str(image["file_name"])) for image in data["images"]]
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in data["annotations"]]
    except (KeyError, TypeError, ValueError) as exc:
        kind = exc.__class__.__name__
        raise DataError(f"{json_path}: malformed COCO entry ({kind}: {one_line(exc)})") from None

    category_ids = [cid for cid, _ in categories]
    repeated = sorted(cid for cid, count in Counter(category_ids).items() if count > 1)
    if repeated:
        raise DataError(f"{json_path}: category ids given more than once: {summarize(repeated)}")
    image_ids = [iid for iid, _ in images]
    doubles = sorted(iid for iid, count in Counter(image_ids).items() if count > 1)
    if doubles:
        raise DataError(f"{json_path}: image ids given more than once: {summarize(doubles)}")

    column = {cid: c for c, cid in enumerate(category_ids)}
    row = {iid: r for r, iid in enumerate(image_ids)}
    bad_images = sorted({iid for iid, _ in annotations if iid not in row})
    bad_categories = sorted({cid for _, cid in annotations if cid not in column})
    if bad_images or bad_categories:
        parts = []
        if bad_images:
            parts.append(f"{len(bad_images)} unknown image ids ({summarize(bad_images)})")
        if bad_categories:
            parts.append(f"{len(bad_categories)} unknown category ids ({summarize(bad_categories)})")
        raise DataError(f"{json_path}: annotations refer to {' and '.join(parts)}")

    labels = np.zeros((len(images), len(categories)), dtype=np.uint8)
    if annotations:
        rows = np.fromiter((row[iid] for iid, _ in annotations), dtype=np.int64, count=len(annotations))
        cols = np.fromiter((column[cid] for _, cid in annotations), dtype=np.int64, count=len(annotations))
        labels[rows, cols] = 1
    image_root = Path(image_dir)
    return Records(
        class_names=[name for _, name in categories],
        image_ids=[str(iid) for iid in image_ids],
        paths=[image_root / file_name for _, file_name in images],
        labels=labels,
    )


# ----------------------------------------------------------------------------------------- NUS-WIDE


def read_nus_wide(root: str | Path, split: str = "Train") -> Records:
    """NUS-WIDE concept labels from the public distribution's layout.

    The layout read, under ``root``::

        Concepts81.txt                  the 81 concept names, one per line; file order = class order
        ImageList/TrainImagelist.txt    relative image paths, one per line, with backslashes
        ImageList/TestImagelist.txt       (``actor\\0001_2124494179.jpg``)
        Groundtruth/TrainTestLabels/Labels_{concept}_Train.txt
        Groundtruth/TrainTestLabels/Labels_{concept}_Test.txt
                                        one 0 or 1 per line; line i belongs to image i of the image list
        Flickr/actor/0001_2124494179.jpg
                                        the images: list paths are resolved under ``root/Flickr/``

    ``split`` is ``"Train"`` or ``"Test"``. ``image_id`` is the relative path with forward slashes
    (``actor/0001_2124494179.jpg``). Blank lines and surrounding spaces are ignored everywhere.
    """
    root = Path(root)
    split_name = {"train": "Train", "test": "Test"}.get(str(split).lower())
    if split_name is None:
        raise DataError(f"NUS-WIDE split must be 'Train' or 'Test', not {split!r}")
    concepts = [line for _, line in _lines(_read_text(root / "Concepts81.txt", "NUS-WIDE concept list"))]
    if not concepts:
        raise DataError(f"{root / 'Concepts81.txt'} lists no concepts")
    list_file = root / "ImageList" / f"{split_name}Imagelist.txt"
    relative = [line.replace("\\", "/") for _, line in _lines(_read_text(list_file, "NUS-WIDE image list"))]
    label_dir = root / "Groundtruth" / "TrainTestLabels"
    missing = [
        f"Labels_{concept}_{split_name}.txt"
        for concept in concepts
        if not (label_dir / f"Labels_{concept}_{split_name}.txt").is_file()
    ]
    if missing:
        raise DataError(f"{len(missing)} NUS-WIDE label files missing in {label_dir}: {summarize(missing)}")

    labels = np.zeros((len(relative), len(concepts)), dtype=np.uint8)
    problems: list[str] = []
    for c, concept in enumerate(concepts):
        label_file = label_dir / f"Labels_{concept}_{split_name}.txt"
        values = [line for _, line in _lines(_read_text(label_file, "NUS-WIDE label file"))]
        if len(values) != len(relative):
            problems.append(f"{label_file.name} has {len(values)} values for {len(relative)} images")
            continue
        column = np.array(values)
        bad = np.flatnonzero((column != "0") & (column != "1"))
        if bad.size:
            shown = [f"line {i + 1}: {values[i]!r}" for i in bad[:3]]
            problems.append(f"{label_file.name} has values other than 0/1 ({summarize(shown, 3)})")
            continue
        labels[:, c] = column == "1"
    if problems:
        raise DataError(f"NUS-WIDE {split_name} labels do not match {list_file.name}: {summarize(problems)}")
    flickr = root / "Flickr"
    return Records(
        class_names=concepts,
        image_ids=relative,
        paths=[flickr / rel for rel in relative],
        labels=labels,
    )


ASL_SPLITS = {"train": "train", "val": "val", "test": "val"}


def _asl_label_cell(cell: str) -> list[str] | None:
    """``"['clouds', 'sky']"`` -> ``['clouds', 'sky']`` (read as text, never evaluated); None if malformed."""
    text = cell.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    names = [part.strip().strip("'\"").strip() for part in text[1:-1].split(",")]
    return [name for name in names if name]


def read_nus_wide_csv(
    path: str | Path, image_root: str | Path, split: str = "train", class_names: Sequence[str] | None = None
) -> Records:
    """NUS-WIDE as released with ASL (Ridnik et al., 2021): one CSV, ``filepath,label,split_name``.

    ``label`` is a bracketed list of quoted concept names (``['clouds', 'sky']``; ``[]`` for none),
    ``split_name`` is ``train`` or ``val`` (``split="test"`` reads ``val``). The classes are
    ``class_names`` when given, else the sorted names seen anywhere in the file (both splits, so that
    train and test share one order; 81 in the ASL release). ``image_id`` is the file path as written;
    the image is ``image_root / filepath``. A leading unnamed index column (pandas) is ignored.
    """
    csv_path = Path(path)
    wanted = ASL_SPLITS.get(str(split).lower())
    if wanted is None:
        raise DataError(f"NUS-WIDE CSV split must be 'train' or 'val' ('test'), not {split!r}")
    rows = list(csv.reader(io.StringIO(_read_text(csv_path, "NUS-WIDE CSV"), newline="")))
    header = [field.strip() for field in rows[0]] if rows else []
    if not {"filepath", "label", "split_name"} <= set(header):
        raise DataError(f"{csv_path}: the header must name filepath, label and split_name, found {header}")
    col = {name: header.index(name) for name in ("filepath", "label", "split_name")}
    entries: list[tuple[int, str, list[str], str]] = []
    problems: list[str] = []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            problems.append(f"line {number}: {len(row)} fields for {len(header)} columns")
            continue
        names = _asl_label_cell(row[col["label"]])
        split_name = row[col["split_name"]].strip().lower()
        relative = row[col["filepath"]].strip().replace("\\", "/")
        if names is None:
            problems.append(f"line {number}: label {one_line(row[col['label']])!r} is not a [...] list")
        elif split_name not in ("train", "val"):
            problems.append(f"line {number}: split_name {split_name!r} is neither train nor val")
        elif not relative:
            problems.append(f"line {number}: no filepath")
        else:
            entries.append((number, relative, names, split_name))
    if problems:
        raise DataError(f"{csv_path}: {len(problems)} malformed rows: {summarize(problems)}")
    if class_names is None:
        classes = sorted({name for _, _, names, _ in entries for name in names})
    else:
        classes = list(class_names)
        unknown = sorted({name for _, _, names, _ in entries for name in names} - set(classes))
        if unknown:
            raise DataError(
                f"{csv_path}: {len(unknown)} labels are not among the classes: {summarize(unknown)}"
            )
    chosen = [entry for entry in entries if entry[3] == wanted]
    image_root = Path(image_root)
    paths = [image_root / relative for _, relative, _, _ in chosen]
    _reject_repeated_paths(paths, csv_path)
    column = {name: c for c, name in enumerate(classes)}
    labels = np.zeros((len(chosen), len(classes)), dtype=np.uint8)
    for r, (_, _, names, _) in enumerate(chosen):
        labels[r, [column[name] for name in names]] = 1
    return Records(
        class_names=classes, image_ids=[relative for _, relative, _, _ in chosen], paths=paths, labels=labels
    )


# ------------------------------------------------------------------------------ list / CSV / id files


def read_list_file(path: str | Path, image_root: str | Path, class_names: Sequence[str]) -> Records:
    """The official split list format: ``relative/path.jpg idx idx ...`` per line.

    Indices point into ``class_names``; a line with no index is an image without labels. ``image_id`` is
    the file stem, and the image is ``image_root / relative path``. No image is opened.
    """
    list_path = Path(path)
    names = list(class_names)
    image_root = Path(image_root)
    image_ids: list[str] = []
    paths: list[Path] = []
    rows: list[list[int]] = []
    not_numbers: list[str] = []
    out_of_range: list[str] = []
    for number, line in _lines(_read_text(list_path, "list file")):
        relative, *tokens = line.split()
        try:
            indices = [int(token) for token in tokens]
        except ValueError:
            not_numbers.append(f"line {number}: {line!r}")
            continue
        if any(not 0 <= idx < len(names) for idx in indices):
            out_of_range.append(f"line {number}: {line!r}")
            continue
        image_ids.append(Path(relative).stem)
        paths.append(image_root / relative)
        rows.append(indices)
    if not_numbers:
        raise DataError(
            f"{list_path}: {len(not_numbers)} lines have labels that are not integer indices: "
            f"{summarize(not_numbers)}"
        )
    if out_of_range:
        raise DataError(
            f"{list_path}: {len(out_of_range)} lines have class indices outside 0..{len(names) - 1}: "
            f"{summarize(out_of_range)}"
        )
    _reject_repeated_paths(paths, list_path)
    labels = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for r, indices in enumerate(rows):
        labels[r, indices] = 1
    return Records(class_names=names, image_ids=image_ids, paths=paths, labels=labels)


def read_csv(path: str | Path, image_root: str | Path, class_names: Sequence[str] | None = None) -> Records:
    """A CSV with header ``path,labels``: labels are class names separated by ``;`` (empty = no label).

    With ``class_names`` given, every name must be one of them and they fix the class order; otherwise the
    classes are the sorted union of the names seen. ``image_id`` is the path's stem; the image is
    ``image_root / path``. No image is opened.
    """
    csv_path = Path(path)
    text = _read_text(csv_path, "CSV file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [field.strip() for field in (reader.fieldnames or [])]
    if "path" not in header or "labels" not in header:
        raise DataError(f"{csv_path}: the header must name the columns 'path' and 'labels', found {header}")
    reader.fieldnames = header
    image_root = Path(image_root)
    entries: list[tuple[int, str, list[str]]] = []
    empty_paths: list[str] = []
    for record in reader:
        line = reader.line_num
        relative = (record.get("path") or "").strip()
        if not relative:
            if any((value or "").strip() for value in record.values() if isinstance(value, str)):
                empty_paths.append(f"line {line}")
            continue
        names = [name.strip() for name in (record.get("labels") or "").split(";") if name.strip()]
        entries.append((line, relative, names))
    if empty_paths:
        raise DataError(f"{csv_path}: {len(empty_paths)} rows have no path: {summarize(empty_paths)}")

    if class_names is None:
        classes = sorted({name for _, _, names in entries for name in names})
    else:
        classes = list(class_names)
        known = set(classes)
        unknown_rows = [
            f"line {line} ({', '.join(repr(name) for name in names if name not in known)})"
            for line, _, names in entries
            if any(name not in known for name in names)
        ]
        if unknown_rows:
            unknown_names = sorted({name for _, _, names in entries for name in names if name not in known})
            raise DataError(
                f"{csv_path}: {len(unknown_names)} unknown class names ({summarize(unknown_names)}) in "
                f"{len(unknown_rows)} rows: {summarize(unknown_rows)}"
            )
    column = {name: c for c, name in enumerate(classes)}
    paths = [image_root / relative for _, relative, _ in entries]
    _reject_repeated_paths(paths, csv_path)
    labels = np.zeros((len(entries), len(classes)), dtype=np.uint8)
    for r, (_, _, names) in enumerate(entries):
        labels[r, [column[name] for name in names]] = 1
    return Records(
        class_names=classes,
        image_ids=[Path(relative).stem for _, relative, _ in entries],
        paths=paths,
        labels=labels,
    )


def read_id_list(path: str | Path) -> list[str]:
    """Image ids, one per line, as written (``img_id.txt``; COCO-LT's ``img_id.pkl`` is such a text file).

    The file is read as text and never unpickled. COCO ids may lack zero padding (``554625`` for
    ``000000554625.jpg``): they are returned unchanged, so compare them as integers when matching stems.
    """
    id_path = Path(path)
    if not id_path.is_file():
        raise DataError(f"id list not found: {id_path}")
    try:
        text = id_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{id_path} is not a text id list (a binary or pickled file is not read)") from None
    entries = _lines(text)
    malformed = [f"line {number}: {one_line(line)!r}" for number, line in entries if len(line.split()) != 1]
    if malformed:
        raise DataError(
            f"{id_path}: expected one id per line; {len(malformed)} lines differ: {summarize(malformed)}"
        )
    return [line for _, line in entries]


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a ``name idx`` per line file (``voc_labels.txt``, ``coco_labels.txt``), by idx.

    Names may contain spaces (``traffic light 9``); surrounding spaces are dropped. The indices must be
    0..C-1, each once.
    """
    names_path = Path(path)
    by_index: dict[int, str] = {}
    malformed: list[str] = []
    repeated: list[str] = []
    for number, line in _lines(_read_text(names_path, "class name file")):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            malformed.append(f"line {number}: {line!r}")
            continue
        name, index = parts[0].strip(), int(parts[1])
        if index in by_index:
            repeated.append(f"line {number}: index {index}")
        by_index[index] = name
    if malformed:
        raise DataError(
            f"{names_path}: expected 'name index' per line; {len(malformed)} lines differ: "
            f"{summarize(malformed)}"
        )
    if repeated:
        raise DataError(f"{names_path}: class indices given more than once: {summarize(repeated)}")
    expected = set(range(len(by_index)))
    if set(by_index) != expected:
        gaps = sorted(expected - set(by_index))
        extra = sorted(set(by_index) - expected)
        raise DataError(
            f"{names_path}: indices must run 0..{len(by_index) - 1}; missing {summarize(gaps) or 'none'}, "
            f"unexpected {summarize(extra) or 'none'}"
        )
    names = [by_index[i] for i in range(len(by_index))]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise DataError(f"{names_path}: class names given more than once: {summarize(doubled)}")
    return names
