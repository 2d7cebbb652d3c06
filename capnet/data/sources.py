"""From a DataConfig to Records: which reader, which files, which long-tailed subset."""

from __future__ import annotations

from pathlib import Path

from capnet.config import DataConfig
from capnet.data.formats import (
    read_class_names,
    read_coco,
    read_csv,
    read_id_list,
    read_list_file,
    read_nus_wide,
    read_nus_wide_csv,
    read_voc,
)
from capnet.data.records import DataError, Records


def _class_names(cfg: DataConfig) -> list[str] | None:
    if cfg.class_names is None or isinstance(cfg.class_names, list):
        return cfg.class_names
    return read_class_names(cfg.class_names)


def select_official_ids(records: Records, ids: list[str]) -> Records:
    """Select by id, matching COCO's unpadded ids ("554625") to zero-padded file stems ("000000554625")."""
    known = set(records.image_ids)
    if all(i in known for i in ids):
        return records.select_ids(ids)
    canonical = {i.lstrip("0") or "0": i for i in records.image_ids if i.isdigit()}
    return records.select_ids([canonical.get(i.lstrip("0") or "0", i) if i.isdigit() else i for i in ids])


def _file_under_root(root: Path, spec: str, key: str, what: str) -> Path:
    """A list or CSV file named by ``data.train`` / ``data.test``, relative to data.root."""
    if not spec:
        raise DataError(f"data.{key} names no {what} file (the {what} format needs one)")
    path = root / Path(spec).expanduser()
    if not path.is_file():
        where = f"looked for {path}" + (
            "" if Path(spec).is_absolute() else f": data.{key} is relative to data.root"
        )
        raise DataError(f"{what} file not found: {spec} ({where})")
    return path


def load_split(cfg: DataConfig, split: str) -> Records:
    """The training (``split="train"``, long-tailed subset applied) or test records of a config.

    Relative paths start from the folder of whatever names them: a list or CSV file named by data.train /
    data.test from data.root; the image paths inside a CSV from the CSV's own folder (a CSV and its images
    travel together, as `capnet world scenes` and the app's zip uploads write them); those of a list file
    from data.root (the official lists are relative to the dataset's root).
    """
    if split not in ("train", "test"):
        raise ValueError("split is 'train' or 'test'")
    spec = cfg.train if split == "train" else cfg.test
    root = Path(cfg.root)
    if cfg.format == "voc":
        year, _, name = (spec or ("2012/trainval" if split == "train" else "2007/test")).partition("/")
        records = read_voc(root, year, name or ("trainval" if split == "train" else "test"))
    elif cfg.format == "coco":
        name = spec or ("train2017" if split == "train" else "val2017")
        records = read_coco(root / "annotations" / f"instances_{name}.json", root / name)
    elif cfg.format == "nus_wide" and spec.lower().endswith(".csv"):  # the ASL release: one CSV
        records = read_nus_wide_csv(root / spec, root, split, _class_names(cfg))
    elif cfg.format == "nus_wide":
        records = read_nus_wide(root, spec or ("Train" if split == "train" else "Test"))
    elif cfg.format == "list":
        names = _class_names(cfg)
        if not names:
            raise DataError("the list format needs data.class_names (a 'name idx' file or a list of names)")
        records = read_list_file(_file_under_root(root, spec, split, "list"), root, names)
    else:
        csv_path = _file_under_root(root, spec, split, "CSV")
        records = read_csv(csv_path, csv_path.parent, _class_names(cfg))
    if split == "train" and cfg.train_ids:
        records = select_official_ids(records, read_id_list(cfg.train_ids))
    return records
