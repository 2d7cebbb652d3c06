"""Overlays: an evidence map blended over the image the model saw, with a labelled colour bar.

matplotlib is not a dependency of capnet, so the colour map is the perceptually uniform "viridis" given by
five of its published anchor colours and interpolated linearly between them (close enough for a heat map).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# viridis at 0, 0.25, 0.5, 0.75 and 1 (RGB).
VIRIDIS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) to uint8 RGB, shape (..., 3)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(VIRIDIS) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(VIRIDIS) - 2)
    t = (v - lo)[..., None]
    return np.round(VIRIDIS[lo] * (1 - t) + VIRIDIS[lo + 1] * t).astype(np.uint8)


def _label(value: float) -> str:
    return f"{value:.3g}"


def overlay(
    image: Image.Image,
    grid: np.ndarray,
    *,
    alpha: float = 0.55,
    vmin: float | None = None,
    vmax: float | None = None,
    size: int = 256,
    title: str | None = None,
) -> Image.Image:
    """The image (resized to ``size`` on its long side) under the map, and a colour bar on the right.

    The map is stretched over the whole image with bilinear smoothing; ``vmin``/``vmax`` default to the
    map's own range (the bar's end labels say what the colours mean).
    """
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError("an evidence map must be a non-empty 2-D grid of finite numbers")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must lie in [0, 1]")
    lo = float(grid.min()) if vmin is None else float(vmin)
    hi = float(grid.max()) if vmax is None else float(vmax)
    scale = max(image.size)
    base = image.convert("RGB").resize(
        (max(1, round(image.width * size / scale)), max(1, round(image.height * size / scale))),
        Image.Resampling.BICUBIC,
    )
    unit = (grid - lo) / (hi - lo) if hi > lo else np.full_like(grid, 0.5)
    smooth = Image.fromarray(unit.astype(np.float32), mode="F").resize(base.size, Image.Resampling.BILINEAR)
    heat = Image.fromarray(colormap(np.asarray(smooth)), "RGB")
    blended = Image.blend(base, heat, alpha)

    bar_w, pad, text_w = max(8, size // 20), max(4, size // 40), 48
    header = 14 if title else 0
    canvas = Image.new("RGB", (blended.width + pad + bar_w + text_w, blended.height + header), "white")
    canvas.paste(blended, (0, header))
    ramp = np.linspace(1.0, 0.0, blended.height)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colormap(ramp), "RGB"), (blended.width + pad, header))
    pen = ImageDraw.Draw(canvas)
    x_text = blended.width + pad + bar_w + 3
    pen.text((x_text, header), _label(hi), fill="black")
    pen.text((x_text, header + blended.height - 12), _label(lo), fill="black")
    if title:
        pen.text((2, 1), title, fill="black")
    return canvas
