"""A torch Dataset over :class:`Records`, and a pass that finds missing or undecodable images up front."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from capnet.data.records import DataError, Records, summarize
from capnet.images import DEFAULT_MAX_PIXELS, ImageError, load_image


def _default_transform(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1], no resizing: enough for inspection, not for batching mixed sizes."""
    return TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)


class ImageDataset(Dataset):
    """Items ``(image, labels, image_id)``: the transformed RGB image, a float (C,) 0/1 vector, the id.

    ``transform`` maps the decoded upright RGB PIL image to a tensor: (3, H, W), or (V, 3, H, W) for
    multi-view test-time ensembling. Without one, images come back as (3, H, W) floats in [0, 1] at their
    own size. A file that cannot be read raises :class:`DataError` naming it; run :func:`check_images`
    first to find such files before a long run.
    """

    def __init__(
        self,
        records: Records,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.records = records
        self.transform = transform if transform is not None else _default_transform
        self.max_pixels = max_pixels
        self._labels = torch.from_numpy(records.labels.astype("float32"))

    @property
    def class_names(self) -> list[str]:
        return self.records.class_names

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        path = self.records.paths[index]
        image_id = self.records.image_ids[index]
        try:
            image = load_image(path, max_pixels=self.max_pixels, name=str(path))
        except ImageError as exc:
            raise DataError(f"image {image_id!r}: {exc}") from None
        return self.transform(image), self._labels[index].clone(), image_id


def _problem(path: Path, max_pixels: int) -> str | None:
    if not path.is_file():
        return f"{path}: file not found"
    try:
        load_image(path, max_pixels=max_pixels, name=str(path))
    except ImageError as exc:
        return str(exc)
    return None


def check_images(
    records: Records,
    *,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_workers: int | None = None,
    desc: str = "checking images",
) -> tuple[Records, list[str]]:
    """Make sure every image of ``records`` exists and decodes (with :func:`capnet.images.load_image`).

    Returns ``(records, problems)``. With ``skip_bad=False`` any problem raises one :class:`DataError`
    listing the first ten bad files and how many more there are; ``problems`` is then empty. With
    ``skip_bad=True`` the bad images are dropped from the returned records and ``problems`` holds one line
    per dropped image, so the caller can say how many were skipped. Files are decoded on ``num_workers``
    threads (default: up to 8); a progress bar shows on a terminal.
    """
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    paths = records.paths

    def check(path: Path) -> str | None:
        return _problem(path, max_pixels)

    with tqdm(total=len(paths), desc=desc, unit="img", disable=None) as bar:
        if workers <= 1:
            results = []
            for path in paths:
                results.append(check(path))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = []
                for result in pool.map(check, paths):
                    results.append(result)
                    bar.update()
    problems = [result for result in results if result is not None]
    if not problems:
        return records, []
    if not skip_bad:
        raise DataError(
            f"{len(problems)} of {len(paths)} images cannot be used: {summarize(problems)} "
            "(pass skip_bad=True to leave them out)"
        )
    keep = [i for i, result in enumerate(results) if result is None]
    return records.subset(keep), problems
