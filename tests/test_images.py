"""Every image a user may hand in decodes upright to 8-bit RGB, or fails with one readable line."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from capnet.images import ImageError, load_image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_greyscale_palette_cmyk_become_rgb():
    grey = load_image(_save(Image.new("L", (8, 6), 77), "PNG"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30] + [0] * 765)
    assert load_image(_save(pal, "PNG")).getpixel((1, 1)) == (10, 20, 30)
    cmyk = load_image(_save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100))
    r, g, b = cmyk.getpixel((2, 2))
    assert r > 240 and g < 15 and b < 15  # pure red in CMYK


def test_transparency_shows_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = load_image(_save(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((3, 3)) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range():
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = np.asarray(load_image(_save(Image.fromarray(arr), "PNG")))
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]  # 4000 maps to 255, not clipped at 255 raw


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    out = load_image(_save(image, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_bad_files_give_one_line(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"%PDF-1.4 definitely not an image", name="doc.pdf")
    jpeg = _save(Image.new("RGB", (64, 64), "green"), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        load_image(jpeg[: len(jpeg) // 2], name="half.jpg")
    assert "\n" not in str(info.value) and "half.jpg" in str(info.value)
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.png")


def test_huge_images_are_refused_before_decoding():
    big = _save(Image.new("1", (10_000, 10_000)), "PNG")  # 100 megapixels, a few kB on disk
    with pytest.raises(ImageError, match="100 megapixels"):
        load_image(big, name="big.png")
