"""Image decoding that gives the model what a person sees: upright, RGB, 8 bits, whatever the file holds."""

from __future__ import annotations

import io
import re
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


class ImageTooLarge(ImageError):
    """An image with more pixels than allowed: refused unread, not mistaken for a corrupt file."""


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


def _too_large(label: str, width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{label}: too large ({width}x{height} is {width * height / 1e6:g} megapixels; "
        f"at most {max_pixels / 1e6:g} are allowed)"
    )


def _decode(image: Image.Image, min_side: int | None) -> Image.Image:
    """Load the pixels, smaller by a whole factor when the short side stays at least ``min_side``.

    JPEG scales down inside the decoder (``draft``: a 40-megapixel photo never exists at full size);
    other formats are reduced right after loading, before the copies that conversion makes.
    """
    factor = max(1, min(image.size) // min_side) if min_side else 1
    if factor > 1 and image.format == "JPEG":
        image.draft(image.mode, (image.width // factor, image.height // factor))
    image.load()
    factor = max(1, min(image.size) // min_side) if min_side else 1
    if factor > 1 and image.mode not in ("P", "1"):  # reduce cannot average palette indices
        return image.reduce(factor)
    return image


def load_image(
    source: str | Path | bytes | BinaryIO,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` to an upright RGB image, or raise ImageError with one readable line.

    With ``min_side``, large images come back reduced by a whole factor that keeps their short side at
    least ``min_side`` pixels: what a model that resizes to ``min_side`` or less needs, at a fraction of
    the memory.
    """
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
                raise _too_large(label, width, height, max_pixels)
            decoded = _decode(image, min_side)
            upright = ImageOps.exif_transpose(decoded)
            return _to_rgb(upright)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires inside open() for images far past any sane size; it says how large.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:g} megapixels; " if found else ""
        raise ImageTooLarge(f"{label}: too large ({size}at most {max_pixels / 1e6:g} are allowed)") from None
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc.__class__.__name__})") from None
