"""Zero-shot calibration: per-class biases set on a fixed reference set, never on the batch being predicted.

A zero-shot logit is s * cos(image, class text) with s near 100 for OpenAI CLIP (about 19 for the synthetic
world's tiny CLIP) and cosines around 0.2-0.3, so the raw sigmoid says "yes" to nearly every class. The
calibration sets b_c = -s * q_c, where q_c is the (1 - prior_c) quantile of class c's cosines over the
reference images (``CapNet.calibrate``): P(c) = 0.5 exactly at that quantile, so on images like the
reference set a class is flagged for about a prior_c fraction of them. The default prior is flat,
labels-per-image / classes (2 / C, at most 0.5), the expected share of positives when nothing else is known.

The reference set never depends on the images being predicted, so one image gets the same probabilities
alone or among a hundred. Three kinds: images the caller passes (the synthetic world's scenes for its tiny
CLIP: the caller generates them, the library never imports ``capnet.world``), photos that ship with
scikit-image (for real CLIP), or the user's own folder. Their image features are cached on disk per image
tower (weights fingerprint), transform, device type and reference set, so a second calibration, for any
label set, costs no pass through the image tower.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from capnet.backbone import frozen_fingerprint
from capnet.checkpoint import save_atomic
from capnet.images import IMAGE_SUFFIXES, ImageError, load_image
from capnet.model import CapNet

DEFAULT_CACHE_DIR = ".cache/capnet-calibration"
DEFAULT_LABELS_PER_IMAGE = 2.0
MAX_REFERENCE_IMAGES = 500  # a folder's images beyond this are thinned out evenly
MAX_FOLDER_ENTRIES = 100_000  # files looked at while walking a folder
CACHE_FORMAT = "capnet-calibration/1"
_METADATA_KEY = "capnet_calibration"

# scikit-image's bundled photographs (offline, no pooch download); synthetic test patterns are left out.
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "text",
)
# Each photo whole and as its four quarters: five views of different content per photo.
SKIMAGE_CROPS = ("whole", "top-left", "top-right", "bottom-left", "bottom-right")


class CalibrationError(ValueError):
    """A reference set that cannot be used (missing dependency, empty or unreadable folder)."""


def _as_is(item: Any) -> Image.Image:
    return item


@dataclass(frozen=True)
class ReferenceSet:
    """Images a zero-shot calibration is set on, opened one at a time (a cache hit opens none).

    ``identity`` keys the feature cache: it must change whenever the images do. ``open`` turns an item into
    an RGB image or raises ``ImageError``, and such items are skipped and counted.
    """

    name: str
    identity: str
    items: tuple[Any, ...]
    open: Callable[[Any], Image.Image] = _as_is

    @classmethod
    def of_images(cls, name: str, images: Sequence[Image.Image]) -> ReferenceSet:
        """Images already in memory (e.g. the synthetic world's scenes); the identity hashes their pixels."""
        digest = hashlib.sha256()
        for image in images:
            rgb = image.convert("RGB")
            digest.update(f"{rgb.size}".encode())
            digest.update(rgb.tobytes())
        return cls(name, f"images:{len(images)}:{digest.hexdigest()}", tuple(images))


def flat_prior(num_classes: int, labels_per_image: float = DEFAULT_LABELS_PER_IMAGE) -> float:
    """The share of images expected to show a class when only the labels per image are known."""
    if num_classes < 1 or labels_per_image <= 0:
        raise ValueError("a flat prior needs at least one class and a positive number of labels per image")
    return min(0.5, labels_per_image / num_classes)


@functools.lru_cache(maxsize=1)
def _skimage_photo(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
        array = array[0]
    return Image.fromarray(np.asarray(array)).convert("RGB")


def _skimage_view(item: tuple[str, str]) -> Image.Image:
    name, crop = item
    photo = _skimage_photo(name)
    if crop == "whole":
        return photo
    w, h = photo.size
    left = 0 if crop.endswith("left") else w // 2
    top = 0 if crop.startswith("top") else h // 2
    return photo.crop((left, top, left + w // 2, top + h // 2))


def skimage_reference() -> ReferenceSet:
    """scikit-image's bundled photos (an app extra), each whole and in quarters: for real CLIP weights."""
    try:
        import skimage
    except ImportError:
        raise CalibrationError(
            "the skimage photos reference set needs scikit-image (pip install 'capnet[app]'), "
            "or calibrate on your own folder of images"
        ) from None
    items = tuple((name, crop) for name in SKIMAGE_PHOTOS for crop in SKIMAGE_CROPS)
    identity = f"skimage:{skimage.__version__}:{','.join(SKIMAGE_PHOTOS)}:{','.join(SKIMAGE_CROPS)}"
    return ReferenceSet("skimage photos", identity, items, _skimage_view)


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (symbolic links are not followed), sorted; dot files and folders skipped."""
    found: list[Path] = []
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                return found
            path = Path(folder) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and not path.is_symlink():
                found.append(path)
    return found


def folder_reference(directory: str | Path, *, max_images: int = MAX_REFERENCE_IMAGES) -> ReferenceSet:
    """All images under ``directory`` (evenly thinned to ``max_images``); unreadable ones are skipped.

    The identity covers each chosen file's path, size and modification time, so editing the folder
    invalidates the cached features.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder not found: {directory}")
    files = _image_files(root)
    if len(files) < 2:
        raise CalibrationError(
            f"{directory} holds {len(files)} image file(s); calibration needs at least two "
            f"(suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    digest = hashlib.sha256(str(root.resolve()).encode())
    for path in files:
        st = path.stat()
        digest.update(f"|{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return ReferenceSet(f"folder {directory}", f"folder:{digest.hexdigest()}", tuple(files), load_image)


def choose_reference(
    folder: str | Path | None = None, scenes: Callable[[], Sequence[Image.Image]] | None = None
) -> ReferenceSet:
    """The rule the app and the command line share, so that they agree on every image.

    The user's folder (``--calibrate-on DIR``) first, else the synthetic world's scenes when the caller
    serves the world's model (it passes ``scenes``), else scikit-image's photos.
    """
    if folder is not None:
        return folder_reference(folder)
    if scenes is not None:
        return ReferenceSet.of_images("synthetic-world scenes", scenes())
    return skimage_reference()


@dataclass
class ReferenceFeatures:
    """Normalised image features (N, D) of a reference set, and what it took to get them."""

    features: torch.Tensor
    name: str
    skipped: int  # items that could not be opened as images
    problems: list[str]  # one line per skipped item (empty when read from the cache)
    cached: bool  # read from the cache: no image-tower pass


def _cache_path(model: CapNet, reference: ReferenceSet, transform: Callable, cache_dir: Path) -> Path:
    digest = hashlib.sha256()
    tower = frozen_fingerprint(model.clip.visual)
    for part in (tower, repr(transform), model.device.type, reference.identity):
        digest.update(part.encode())
        digest.update(b"\0")
    return cache_dir / f"{digest.hexdigest()[:32]}.safetensors"


def _read_cache(path: Path) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The cached features, or None when the file is absent, unreadable or not ours (then recomputed)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_METADATA_KEY, "null"))
            features = f.get_tensor("features")
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or features.dim() != 2:
        return None
    return features, meta


@torch.no_grad()
def _encode(
    model: CapNet, reference: ReferenceSet, transform: Callable, batch_size: int
) -> tuple[torch.Tensor, list[str]]:
    """Features of every item that opens, ``batch_size`` images at a time (memory stays bounded)."""
    chunks: list[torch.Tensor] = []
    batch: list[torch.Tensor] = []
    problems: list[str] = []
    items = tqdm(reference.items, desc=f"calibration images ({reference.name})", unit="image", disable=None)
    for item in items:
        try:
            batch.append(transform(reference.open(item)))
        except ImageError as exc:
            problems.append(str(exc))
            continue
        if len(batch) == batch_size:
            chunks.append(model.encode_image(torch.stack(batch)).cpu())
            batch = []
    if batch:
        chunks.append(model.encode_image(torch.stack(batch)).cpu())
    features = torch.cat(chunks) if chunks else torch.zeros(0, model.text_features.shape[1])
    return features, problems


def reference_features(
    model: CapNet,
    reference: ReferenceSet,
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
) -> ReferenceFeatures:
    """The reference set's image features, from the cache when this tower has seen this set before.

    ``cache_dir=None`` computes them every time. The cache holds features only (safetensors, written
    atomically), so it serves every label set of the same image tower.
    """
    was_training = model.training
    model.eval()
    transform = model.image_transform()
    path = _cache_path(model, reference, transform, Path(cache_dir)) if cache_dir is not None else None
    hit = _read_cache(path) if path is not None else None
    if hit is not None:
        features, meta = hit
        model.train(was_training)
        return ReferenceFeatures(features, reference.name, int(meta.get("skipped", 0)), [], True)
    features, problems = _encode(model, reference, transform, batch_size)
    model.train(was_training)
    if len(features) < 2:
        raise CalibrationError(
            f"{reference.name}: {len(features)} readable image(s) ({len(problems)} skipped); "
            "calibration needs at least two"
        )
    if path is not None:
        meta = {"format": CACHE_FORMAT, "reference": reference.name, "skipped": len(problems)}
        save_atomic({"features": features.contiguous()}, path, {_METADATA_KEY: json.dumps(meta)})
    return ReferenceFeatures(features, reference.name, len(problems), problems, False)


@dataclass
class Calibration:
    """Which calibration a zero-shot model's probabilities carry, and its biases (to recover raw logits)."""

    reference: str | None  # None: uncalibrated (raw scores)
    images: int
    skipped: int
    prior: float | tuple[float, ...] | None
    cached: bool
    biases: np.ndarray  # (C,) the class biases added to the scaled cosines

    def describe(self) -> str:
        """One line for a command's stderr or the app's status text."""
        if self.reference is None:
            return "zero-shot scores uncalibrated (raw): sigmoid of the scaled cosine, not a probability"
        if isinstance(self.prior, tuple):
            prior = f"per-class priors {min(self.prior):.2f}-{max(self.prior):.2f}"
        else:
            prior = f"prior {self.prior:.2f}"
        skipped = f", {self.skipped} unreadable file(s) skipped" if self.skipped else ""
        return (
            f"zero-shot probabilities calibrated on {self.images} reference images ({self.reference})"
            f"{skipped}, {prior}"
        )

    def raw_logits(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scaled cosines s * cos of calibrated logits (N, C): the logits less the class biases."""
        return np.asarray(logits, dtype=np.float32) - self.biases


def calibrate_zero_shot(
    model: CapNet,
    reference: ReferenceSet | ReferenceFeatures,
    *,
    prior: float | Sequence[float] | None = None,
    labels_per_image: float = DEFAULT_LABELS_PER_IMAGE,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
) -> Calibration:
    """Set a zero-shot model's class biases from a reference set; returns what was done.

    ``prior``: the share of reference-like images expected to show each class (one number or one per
    class); by default ``flat_prior(num_classes, labels_per_image)``.
    """
    if not model.zero_shot:
        raise CalibrationError("only zero-shot models are calibrated on references: trained biases stay")
    if isinstance(reference, ReferenceFeatures):
        ref = reference
    else:
        ref = reference_features(model, reference, cache_dir=cache_dir)
    if prior is None:
        prior = flat_prior(model.num_classes, labels_per_image)
    model.calibrate(ref.features, prior)
    kept = float(prior) if np.ndim(prior) == 0 else tuple(float(p) for p in prior)
    biases = model.class_bias.detach().cpu().numpy().copy()
    return Calibration(ref.name, len(ref.features), ref.skipped, kept, ref.cached, biases)


def uncalibrated(model: CapNet) -> Calibration:
    """Zero biases (``--raw``): the logits are the scaled cosines themselves."""
    if not model.zero_shot:
        raise CalibrationError("only a zero-shot model's biases can be reset: trained biases stay")
    with torch.no_grad():
        model.class_bias.zero_()
    return Calibration(None, 0, 0, None, False, np.zeros(model.num_classes, dtype=np.float32))
