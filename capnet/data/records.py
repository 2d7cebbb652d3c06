"""The in-memory form of a labelled image set: ids, file paths and a 0/1 label matrix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A problem with data files or labels, told in one line that names the offending entries."""


def summarize(items: Sequence[object], limit: int = 10) -> str:
    """``a, b, c and 7 more``: the first ``limit`` items of a list of problems, then how many were left."""
    shown = ", ".join(str(item) for item in items[:limit])
    extra = len(items) - limit
    return f"{shown} and {extra} more" if extra > 0 else shown


def one_line(text: object) -> str:
    """Collapse line breaks so that a message built from file contents stays on one line."""
    return " ".join(str(text).split())


@dataclass
class Records:
    """N images over C classes: ``labels[i, c] == 1`` when image i shows class c.

    ``labels`` is stored as an (N, C) uint8 array of 0/1; any 0/1 array-like (bool, int, float) is accepted.
    """

    class_names: list[str]
    image_ids: list[str]
    paths: list[Path]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.class_names = [str(name) for name in self.class_names]
        self.image_ids = [str(image_id) for image_id in self.image_ids]
        self.paths = [Path(path) for path in self.paths]
        n, c = len(self.image_ids), len(self.class_names)
        if len(self.paths) != n:
            raise DataError(f"Records: {n} image ids but {len(self.paths)} paths")
        repeated = sorted(name for name, count in Counter(self.class_names).items() if count > 1)
        if repeated:
            raise DataError(f"Records: class names given more than once: {summarize(repeated)}")
        labels = np.asarray(self.labels)
        if labels.size == 0:
            labels = labels.reshape(n, c) if labels.size == n * c else labels
        if labels.ndim != 2 or labels.shape != (n, c):
            raise DataError(
                f"Records: labels have shape {labels.shape}, expected ({n}, {c}) for {n} images and "
                f"{c} classes"
            )
        if labels.size and not np.isin(labels, (0, 1)).all():
            rows = np.flatnonzero(~np.isin(labels, (0, 1)).all(axis=1))
            bad = [self.image_ids[i] for i in rows]
            raise DataError(
                f"Records: labels must be 0 or 1; other values in {len(bad)} rows: {summarize(bad)}"
            )
        self.labels = np.ascontiguousarray(labels, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_freq(self) -> np.ndarray:
        """Per-class number of positive images, shape (C,), int64."""
        return self.labels.sum(axis=0, dtype=np.int64)

    def subset(self, indices: Iterable[int] | np.ndarray) -> Records:
        """The records at ``indices`` (integer positions, in that order, or a boolean mask of length N)."""
        index = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise DataError(
                    f"Records.subset: boolean mask of shape {index.shape}, expected ({len(self)},)"
                )
            index = np.flatnonzero(index)
        elif index.size == 0:
            index = index.astype(np.int64)
        elif not np.issubdtype(index.dtype, np.integer):
            raise DataError(f"Records.subset: indices must be integers or a boolean mask, got {index.dtype}")
        index = index.reshape(-1)
        out_of_range = index[(index < -len(self)) | (index >= len(self))].tolist()
        if out_of_range:
            raise DataError(
                f"Records.subset: {len(out_of_range)} indices out of range for {len(self)} records: "
                f"{summarize(out_of_range)}"
            )
        return Records(
            class_names=list(self.class_names),
            image_ids=[self.image_ids[i] for i in index],
            paths=[self.paths[i] for i in index],
            labels=self.labels[index].copy(),
        )

    def select_ids(self, ids: Iterable[str]) -> Records:
        """The records of ``ids``, in the given order; an id missing from these records is an error."""
        wanted = [str(image_id) for image_id in ids]
        position: dict[str, int] = {}
        duplicated: set[str] = set()
        for i, image_id in enumerate(self.image_ids):
            if image_id in position:
                duplicated.add(image_id)
            position.setdefault(image_id, i)
        unknown = [image_id for image_id in wanted if image_id not in position]
        if unknown:
            raise DataError(f"{len(unknown)} image ids not in these records: {summarize(unknown)}")
        ambiguous = sorted({image_id for image_id in wanted if image_id in duplicated})
        if ambiguous:
            raise DataError(
                f"{len(ambiguous)} requested image ids belong to several records: {summarize(ambiguous)}"
            )
        return self.subset([position[image_id] for image_id in wanted])
