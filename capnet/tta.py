"""Test-time ensembling views: five crops of a slightly larger resize (LIFT's 224-of-248), optional flips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

# LIFT resizes to 248 and crops 224: the ratio carries over to any input size.
RESIZE_RATIO = 248 / 224


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


class SingleView:
    """Resize the short side to ``size`` and centre-crop: the plain single-view path."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.resize = T.Compose(
            [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
        )
        self.tensor = _to_tensor(mean, std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.tensor(self.resize(image.convert("RGB")))

    def __repr__(self) -> str:  # the feature cache keys on it: describe the transform, not the object
        return f"SingleView({self.resize!r}, {self.tensor!r})"


class FiveCropViews:
    """(V, 3, size, size) views: four corners and centre of a ``size * 248/224`` resize, plus their flips."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], flips: bool = False) -> None:
        self.size = size
        self.resize = T.Resize(round(size * RESIZE_RATIO), interpolation=T.InterpolationMode.BICUBIC)
        self.flips = flips
        self.tensor = _to_tensor(mean, std)

    @property
    def num_views(self) -> int:
        return 10 if self.flips else 5

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = self.resize(image.convert("RGB"))
        crops = list(TF.five_crop(resized, [self.size, self.size]))
        if self.flips:
            crops += [TF.horizontal_flip(c) for c in crops]
        return torch.stack([self.tensor(c) for c in crops])

    def __repr__(self) -> str:
        return f"FiveCropViews({self.size}, {self.resize!r}, flips={self.flips}, {self.tensor!r})"


def view_transform(
    size: int, mean: Sequence[float], std: Sequence[float], *, tta: bool = False, flips: bool = False
) -> SingleView | FiveCropViews:
    return FiveCropViews(size, mean, std, flips) if tta else SingleView(size, mean, std)
