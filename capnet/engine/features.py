"""Image-feature cache for a frozen image tower: computed once per (image, view), reused every epoch.

The key covers the tower's actual weights (a fingerprint of its parameters, so a different model, tag,
weights file or even seed never matches), the transform and the image files (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from capnet.backbone import frozen_fingerprint
from capnet.data import ImageDataset, Records
from capnet.model import CapNet


class FlipViews:
    """The plain view and its mirror image: two cheap, label-preserving views to draw from each epoch."""

    def __init__(self, base: Callable) -> None:
        self.base = base

    def __call__(self, image) -> torch.Tensor:
        view = self.base(image)
        return torch.stack([view, view.flip(-1)])

    def __repr__(self) -> str:
        return f"FlipViews({self.base!r})"


def cache_key(model: CapNet, records: Records, transform: Callable) -> str:
    digest = hashlib.sha256()
    digest.update(frozen_fingerprint(model.clip.visual).encode())
    digest.update(repr(transform).encode())
    for path in records.paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def compute_features(
    model: CapNet,
    records: Records,
    transform: Callable,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "image features",
) -> torch.Tensor:
    """(N, V, D) normalised image features; V = 1 when the transform gives single (3, H, W) tensors."""
    loader = DataLoader(
        ImageDataset(records, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=model.device.type == "cuda",
    )
    out = []
    for images, _, _ in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
        views = images.shape[1] if images.dim() == 5 else 1
        feats = model.encode_image(images.flatten(0, 1) if images.dim() == 5 else images)
        out.append(feats.view(images.shape[0], views, -1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, model.text_features.shape[1])


def cached_features(
    model: CapNet, records: Records, transform: Callable, cache_dir: str | Path, **kwargs
) -> tuple[torch.Tensor, bool]:
    """Features from the cache when the key matches, else computed and stored; returns (features, hit)."""
    path = Path(cache_dir) / f"{cache_key(model, records, transform)}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"], True
    feats = compute_features(model, records, transform, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": feats.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return feats, False
