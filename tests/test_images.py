"""Every image a user may hand in decodes upright to 8-bit RGB, or fails with one readable line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capnet.images import ImageError, ImageTooLarge, load_image


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


def _tiff(arr: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.frombytes(mode, arr.shape[::-1], arr.tobytes()) if mode else Image.fromarray(arr)
    return _save(image, "TIFF")


def _rescaled(arr: np.ndarray) -> list[list[int]]:
    """The real range of the values spread over 0..255, rounded: what a viewer shows."""
    a = arr.astype(np.float64)
    return np.round((a - a.min()) / (a.max() - a.min()) * 255).astype(int).tolist()


@pytest.mark.parametrize("kind", ["I;16 png", "I;16B tiff", "I tiff", "F tiff"])
def test_deep_greyscale_is_rescaled_from_its_own_range(kind):
    # The minimum is not zero and the values fall on both sides of a half, so offset and rounding matter.
    if kind == "I;16 png":
        arr = np.array([[300, 1000], [2017, 4000]], dtype=np.uint16)
        data = _save(Image.fromarray(arr), "PNG")
    elif kind == "I;16B tiff":
        arr = np.array([[300, 1000], [2017, 4000]], dtype=np.uint16)
        data = _tiff(arr.astype(">u2"), "I;16B")
    elif kind == "I tiff":
        arr = np.array([[-70000, 0], [70001, 140000]], dtype=np.int32)
        data = _tiff(arr)
    else:
        arr = np.array([[-1.5, 0.0], [0.6, 2.5]], dtype=np.float32)
        data = _tiff(arr)
    assert Image.open(io.BytesIO(data)).mode == kind.split()[0]  # the file really holds that mode
    out = load_image(data)
    assert out.mode == "RGB"
    rgb = np.asarray(out)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[..., 0].tolist() == _rescaled(arr)


def test_a_flat_deep_greyscale_image_is_black():
    data = _save(Image.fromarray(np.full((3, 5), 1234, dtype=np.uint16)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by an empty range on the way
        out = load_image(data)
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[0, 0, 0]] * 5] * 3


def test_transparency_of_every_kind_shows_white():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    out = load_image(_save(pal, "PNG", transparency=1))  # palette index 1 is transparent
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.getpixel((2, 2)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (40, 0))
    la.putpixel((0, 0), (40, 255))
    out = load_image(_save(la, "PNG"))
    assert out.getpixel((0, 0)) == (40, 40, 40) and out.getpixel((2, 2)) == (255, 255, 255)
    pa = Image.new("PA", (4, 4), (1, 0))
    pa.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pa.putpixel((0, 0), (1, 255))
    data = _save(pa, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    out = load_image(data)
    assert out.getpixel((0, 0)) == (200, 100, 50) and out.getpixel((2, 2)) == (255, 255, 255)


def _noise_jpeg(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return _save(Image.fromarray(arr).resize(size, Image.BILINEAR), "JPEG", quality=90)


def test_jpeg_is_scaled_inside_the_decoder():
    # Short side 1100 and min_side 512: half size, done by the JPEG decoder itself (Pillow's draft), whose
    # pixels differ from a full decode reduced afterwards.
    data = _noise_jpeg((2048, 1100))
    reference = Image.open(io.BytesIO(data))
    reference.draft("RGB", (1024, 550))
    assert reference.size == (1024, 550)
    out = load_image(data, min_side=512)
    assert np.array_equal(np.asarray(out), np.asarray(reference.convert("RGB")))
    # Sides that are not multiples of the factor: a quarter, rounded up (ceil(4801 / 4), ceil(2401 / 4)).
    data = _noise_jpeg((4801, 2401))
    reference = Image.open(io.BytesIO(data))
    reference.draft("RGB", (1200, 600))
    assert reference.size == (1201, 601)
    assert np.array_equal(np.asarray(load_image(data, min_side=512)), np.asarray(reference.convert("RGB")))


@pytest.mark.parametrize("mode", ["P", "1"])
def test_palette_and_bilevel_images_are_not_averaged(mode):
    # Averaging palette indices or single bits would invent colours: these come back at full size.
    image = Image.new(mode, (1100, 2000), 1)
    if mode == "P":
        image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    out = load_image(_save(image, "PNG"), min_side=512)
    assert out.size == (1100, 2000)
    assert out.getpixel((7, 9)) == ((200, 100, 50) if mode == "P" else (255, 255, 255))


def test_messages_name_the_file_or_say_image():
    assert str(_error(b"junk")) == "image: not an image file (or a format Pillow cannot read)"
    assert str(_error(Path("/nonexistent/dir/missing.png"))) == "missing.png: file not found"
    big = _save(Image.new("1", (1001, 1000)), "PNG")
    assert str(_error(big, max_pixels=1_000_000)) == (
        "image: too large (1001x1000 is 1.001 megapixels; at most 1 are allowed)"
    )


def _error(source, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    return info.value


def test_pillows_own_bomb_guard_gives_the_same_one_line(monkeypatch):
    # Pillow refuses, inside open(), images past twice its MAX_IMAGE_PIXELS; made small here to reach it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _save(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(Image.DecompressionBombError, match=r"\(10000 pixels\)"):
        Image.open(io.BytesIO(data))
    error = _error(data, name="bomb.png", max_pixels=1_000_000)
    assert isinstance(error, ImageTooLarge)
    assert str(error) == "bomb.png: too large (0.01 megapixels; at most 1 are allowed)"
