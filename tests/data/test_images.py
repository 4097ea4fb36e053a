"""load_image: every odd image a user may bring becomes an upright RGB image or a DataError."""
from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from polymodal.data.images import load_image
from polymodal.errors import DataError

RED, BLUE = (220, 20, 20), (20, 20, 220)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand: IHDR, one IDAT of `rows` (each row prefixed by filter 0), IEND."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr)
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def _two_tone(w: int = 40, h: int = 20) -> Image.Image:
    """Top half red, bottom half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2] = RED
    arr[h // 2:] = BLUE
    return Image.fromarray(arr)


def _close(pixel, colour, tol=30):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_a_data_error(tmp_path, fmt):
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated|corrupt"):
        load_image(path)
    with pytest.raises(DataError):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("data", [np.random.default_rng(1).bytes(2000), b"", b"GIF89a\x00"])
def test_random_bytes_and_empty_files_are_data_errors(tmp_path, data):
    path = tmp_path / "noise.jpg"
    path.write_bytes(data)
    with pytest.raises(DataError, match="noise.jpg"):
        load_image(path)


def test_missing_file_and_directory_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="no such image"):
        load_image(tmp_path)


def test_unsupported_source_type():
    with pytest.raises(DataError, match="dict"):
        load_image({"a": 1})


def test_cmyk_jpeg_comes_back_in_its_colours():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # full magenta + yellow = red
    img = load_image(_encode(cmyk, "JPEG", quality=95))
    assert img.mode == "RGB" and img.size == (16, 16)
    assert _close(img.getpixel((8, 8)), (255, 0, 0))


def test_16bit_grey_png_keeps_its_brightness():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = load_image(_encode(Image.fromarray(ramp), "PNG"))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (64, 64, 3)
    expected = np.round(ramp / 65535 * 255)
    assert np.abs(arr[..., 0].astype(float) - expected).max() <= 1
    # a dark 16-bit image stays dark (not stretched as if it were 8-bit)
    dark = np.full((8, 8), 200, np.uint16)
    assert np.asarray(load_image(_encode(Image.fromarray(dark), "PNG"))).max() <= 1


def test_16bit_rgb_png():
    # 48-bit RGB written by hand: every pixel (65535, 32768, 0)
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * 4
    img = load_image(_png(4, 3, 16, 2, row * 3))
    assert img.mode == "RGB" and img.size == (4, 3)
    assert _close(img.getpixel((2, 1)), (255, 128, 0), tol=1)


def test_palette_with_transparency_is_composited_on_white():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    img = load_image(_encode(p, "PNG", transparency=0))  # index 0 (red) is transparent
    assert img.mode == "RGB"
    assert img.getpixel((3, 3)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("mode,value,expected", [
    ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
    ("LA", (0, 255), (0, 0, 0)),
    ("LA", (0, 0), (255, 255, 255)),
    ("L", 77, (77, 77, 77)),
    ("1", 1, (255, 255, 255)),
])
def test_alpha_and_grey_modes(mode, value, expected):
    img = load_image(_encode(Image.new(mode, (3, 3), value), "PNG"))
    assert img.mode == "RGB"
    assert _close(img.getpixel((1, 1)), expected, tol=2)


def test_exif_rotated_jpeg_is_upright():
    upright = _two_tone(40, 20)  # wide, red on top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (20, 40)  # sideways on disk
    img = load_image(data)
    assert img.size == (40, 20)
    assert _close(img.getpixel((20, 2)), RED) and _close(img.getpixel((20, 17)), BLUE)


def test_one_pixel_image():
    img = load_image(_encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (1, 2, 3)


def test_decompression_bomb_header_is_refused_without_decoding():
    # claims 100000 x 100000 pixels and carries no pixel data at all
    bomb = _png(100_000, 100_000, 8, 2, None)
    with pytest.raises(DataError, match="pixel limit|decompression bomb"):
        load_image(bomb)
    # a small limit refuses an ordinary image by its header too
    ok = _encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(DataError, match="4096 is over|over the 1000-pixel limit"):
        load_image(ok, max_pixels=1000)
    assert load_image(ok, max_pixels=64 * 64).size == (64, 64)


def test_arrays_of_every_layout_and_dtype():
    hwc = np.zeros((4, 5, 3), np.uint8)
    hwc[..., 0] = 200
    assert load_image(hwc).getpixel((0, 0)) == (200, 0, 0)
    assert load_image(np.moveaxis(hwc, -1, 0)).size == (5, 4)  # (C, H, W)
    assert load_image(np.full((4, 5), 0.5, np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.full((4, 5), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.ones((4, 5), bool)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(DataError, match="not an image"):
        load_image(np.zeros((2, 3, 4, 5)))


def test_pil_input_and_path_input(tmp_path):
    path = tmp_path / "a.png"
    _two_tone().save(path)
    assert load_image(path).size == (40, 20)
    assert load_image(str(path)).getpixel((0, 0)) == RED
    assert load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_decoded_files_are_cached_until_the_file_changes(tmp_path):
    from polymodal.data import images

    path = tmp_path / "a.png"
    _two_tone().save(path)
    before = images.DECODED.hits
    first = load_image(path)
    first.paste((0, 255, 0), (0, 0, 40, 20))     # a caller changing its copy
    again = load_image(str(path))
    assert images.DECODED.hits == before + 1
    assert again.getpixel((0, 0)) == RED         # the cached image is as decoded
    Image.new("RGB", (8, 8), BLUE).save(path)     # a new file under the same name
    os.utime(path, ns=(10**18, 10**18))
    assert load_image(path).size == (8, 8)
    tmp_path.joinpath("b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="b.png"):  # a bad file is never cached as good
        load_image(tmp_path / "b.png")


def test_decoded_image_budget_drops_the_least_recently_used():
    from polymodal.data.images import DecodedImages

    cache = DecodedImages(max_bytes=3 * 10 * 10 * 3)
    for i in range(4):
        cache.put(("k", i), Image.new("RGB", (10, 10), (i, 0, 0)))
    assert cache.get(("k", 0)) is None and cache.bytes == 3 * 300
    assert cache.get(("k", 3)).getpixel((0, 0)) == (3, 0, 0)
    cache.put(("big",), Image.new("RGB", (20, 20)))   # larger than the whole budget: not kept
    assert cache.get(("big",)) is None and cache.bytes == 900
    off = DecodedImages(max_bytes=0)                  # POLYMODAL_IMAGE_CACHE_MB=0 keeps nothing
    off.put(("k",), Image.new("RGB", (1, 1)))
    assert off.get(("k",)) is None and off.bytes == 0


@pytest.mark.parametrize("value, mib", [("", 1024), ("0", 0), ("12.5", 12.5), ("lots", 1024), ("-3", 1024)])
def test_image_cache_budget_from_the_environment(monkeypatch, caplog, value, mib):
    from polymodal.data.images import _cache_budget

    monkeypatch.setenv("POLYMODAL_IMAGE_CACHE_MB", value)
    assert _cache_budget() == int(mib * 2 ** 20)
    assert ("POLYMODAL_IMAGE_CACHE_MB" in caplog.text) == (value in ("lots", "-3"))
