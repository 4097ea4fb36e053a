"""Robust image decoding: every odd image a user may bring becomes an RGB PIL image or a DataError.

Handles paths, bytes, PIL images and numpy arrays; truncated/corrupt files; CMYK, 16-bit,
palette, greyscale and alpha modes; EXIF rotation; tiny images; and a pixel limit that guards
against decompression bombs.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from polymodal.errors import DataError

#: Largest accepted image, in pixels (~ 16k x 11k). Bigger files are refused, not decoded.
MAX_PIXELS = 178_956_970

ImageInput = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray


class DecodedImages:
    """Decoded image files kept in memory, least recently used out first, up to `max_bytes`.

    Training reads every image once an epoch, and a VQA batch reads an image once per question
    (~6 times); decoding a 64 px PNG costs about as much as the vision tower's share of a step
    on it. The key is (path, modification time, size), so a file changed on disk is read anew.
    Each process (DataLoader workers included) has its own. `POLYMODAL_IMAGE_CACHE_MB` sets the
    budget (0 turns it off).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._images: OrderedDict[tuple, tuple[Image.Image, int]] = OrderedDict()   # key -> (image, bytes)
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Image.Image | None:
        with self._lock:
            entry = self._images.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._images.move_to_end(key)
            self.hits += 1
        return entry[0].copy()   # the caller may change its image; the cached one stays as decoded

    def put(self, key: tuple, img: Image.Image) -> None:
        """Keep a copy of `img` (nothing when it alone is over the budget, as every image is at 0)."""
        size = img.width * img.height * len(img.getbands())
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._images:
                return
            self._images[key] = (img.copy(), size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                self.bytes -= self._images.popitem(last=False)[1][1]


def _cache_budget(default_mb: float = 1024) -> int:
    """Bytes for `DECODED` from `POLYMODAL_IMAGE_CACHE_MB` (a bad value: a warning, the default)."""
    raw = os.environ.get("POLYMODAL_IMAGE_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else default_mb
        if not mb >= 0:
            raise ValueError
    except ValueError:
        logging.getLogger(__name__).warning(
            "POLYMODAL_IMAGE_CACHE_MB=%r is not a number of MiB >= 0 (0 turns the cache off); using %g",
            raw, default_mb)
        mb = default_mb
    return int(mb * 2 ** 20)


#: The decoded files of this process (`load_image` of a path).
DECODED = DecodedImages(_cache_budget())


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `source` into an RGB PIL image, upright per its EXIF orientation.

    Args:
        source: a file path, raw bytes, a PIL image, or an array (H, W), (H, W, 3|4), uint8/uint16/float.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = _from_array(source, name)
    elif isinstance(source, (bytes, bytearray)):
        img = _open(io.BytesIO(source), name, max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        try:
            st = os.stat(source)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise DataError(f"{name}: no such image file; check the path")
        key = (os.fspath(source), st.st_mtime_ns, st.st_size, max_pixels)
        cached = DECODED.get(key)
        if cached is not None:
            return cached
        img = _decoded(_open(Path(source), name, max_pixels), name, max_pixels)
        DECODED.put(key, img)
        return img
    else:
        raise DataError(f"cannot read an image from a {type(source).__name__}; "
                        "give a path, bytes, a PIL image or a numpy array")
    return _decoded(img, name, max_pixels)


def _decoded(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """The checked, upright RGB image of a decoded one."""
    if img.width * img.height > max_pixels:
        raise DataError(f"{name}: {img.width}x{img.height} is over the {max_pixels}-pixel limit; "
                        "downscale it first")
    if img.width < 1 or img.height < 1:
        raise DataError(f"{name}: image has no pixels")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose the image
        pass
    return to_rgb(img, name)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on white, 16-bit is scaled down."""
    try:
        if img.mode == "RGB":
            return img
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
            top = float(arr.max()) if arr.size else 0.0
            if img.mode.startswith("I;16"):
                hi = 65535.0  # 16-bit: the full range, so a dark image stays dark
            elif img.mode == "F" and top <= 1.0:
                hi = 1.0  # floats in [0, 1]
            else:  # 32-bit ints / floats: the smallest usual range that holds the data
                hi = next((h for h in (255.0, 4095.0, 65535.0) if top <= h), max(top, 1.0))
            arr = np.clip(arr / hi * 255.0, 0, 255).round().astype(np.uint8)
            return Image.fromarray(arr, "L").convert("RGB")
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: cannot convert mode {img.mode} to RGB ({exc})") from exc


def _open(fp, name: str, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(fp)
        if img.width * img.height > max_pixels:  # check the header before decoding the pixels
            raise DataError(f"{name}: {img.width}x{img.height} is over the {max_pixels}-pixel limit; "
                            "downscale it first")
        img.load()  # decode now, so a truncated file fails here and not later
        return img
    except DataError:
        raise
    except UnidentifiedImageError as exc:
        raise DataError(f"{name}: not an image file PIL can read") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{name}: refused as a decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: corrupt or truncated image ({exc})") from exc


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise DataError(f"{name}: array of shape {arr.shape} is not an image; want (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 65535.0 * 255.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0  # floats in [0, 1] or [0, 255]
        arr = np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def _describe(source: ImageInput) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "PIL image"
    if isinstance(source, np.ndarray):
        return f"array{tuple(source.shape)}"
    return type(source).__name__
