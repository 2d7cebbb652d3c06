"""Official long-tailed training labels, where the split files are on this machine (never shipped)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from capnet.data import DataError, read_class_names, read_list_file

ROOT = Path(__file__).resolve().parents[1]
# CAPNET_LTSPLITS, else data/ltsplits in the repository, else the development machines' shared copy.
CANDIDATES = [
    os.environ.get("CAPNET_LTSPLITS", ""),
    str(ROOT / "data" / "ltsplits"),
    str(ROOT.parent / "shared" / "ltsplits"),
]
FILES = {
    "VOC": ("voc-lt", "voc_lt_train.txt", "voc_labels.txt"),
    "COCO": ("coco-lt", "coco_lt_train.txt", "coco_labels.txt"),
}


@lru_cache(maxsize=4)
def official_training_labels(preset: str) -> np.ndarray | None:
    """The (N, C) training labels of VOC-LT or COCO-LT from the official list, or None when absent."""
    if preset not in FILES:
        return None
    folder, train_list, names = FILES[preset]
    for base in filter(None, CANDIDATES):
        split = Path(base) / folder
        if (split / train_list).is_file() and (split / names).is_file():
            try:
                return read_list_file(split / train_list, split, read_class_names(split / names)).labels
            except DataError:
                return None
    return None
