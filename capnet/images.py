"""Image decoding that gives the model what a person sees: upright, RGB, 8 bits, whatever the file holds."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Beyond this many pixels an upload is refused before it is decoded (a 100-megapixel PNG is 300 MB in RGB).
DEFAULT_MAX_PIXELS = 40_000_000
# What counts as an image file when a folder is read.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageError(ValueError):
    """A file that is not a readable image, or one too large to decode safely."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: rescale the real range to 8 bits instead of clipping at 255.
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent areas show as white, as in a browser, rather than as whatever colour they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: str | Path | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Decode ``source`` to an upright RGB image, or raise ImageError with one readable line."""
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "image")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size check below decides
            image = Image.open(source)
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
                    f"more than the {max_pixels / 1e6:.0f} allowed"
                )
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc.__class__.__name__})") from None
