"""The inputs of every inference front-end (native and Hugging Face models, the CLI, the index):
one image-input normaliser, one image reader, one batching helper, and expanding command-line
inputs (paths, folders, globs, JSONL request files) into items.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from polymodal.jsonl import iter_jsonl
from polymodal.data.formats import IMAGE_EXTENSIONS
from polymodal.errors import ConfigError, DataError

#: file suffixes read as images (one list for the data readers, the CLI and the image index)
IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)


def as_image_list(images: Any) -> list:
    """Accept one image as well as a list; a 4-D array (N, H, W, C) is a list of N images.

    An image is a path (str / os.PathLike), bytes, a PIL image or an array (H, W[, C]).
    """
    from PIL import Image

    if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def read_image(image: Any, index: int):
    """`load_image` (RGB PIL), with the item's position in the message and in `err.index`."""
    from polymodal.data.images import load_image

    try:
        return load_image(image)
    except DataError as exc:
        err = DataError(f"image #{index}: {exc}")
        err.index = index
        raise err from exc


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices [0, b), [b, 2b), ... covering n items; a bad batch size is a ConfigError."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def chunks(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """`items` in consecutive chunks of `batch_size` (see `batches`)."""
    for sl in batches(len(items), batch_size):
        yield items[sl]


def expand_images(args: list[str]) -> list[str]:
    """Each argument is a file, a folder (its images, sorted, recursively) or a glob pattern."""
    out: list[str] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif not p.is_file() and any(ch in a for ch in "*?["):   # an existing "a[1].png" is a file
            out += sorted(glob.glob(a, recursive=True))
        else:
            out.append(a)  # a missing file is reported per item, not here
    return out


def read_requests(path: str, required: tuple[str, ...]) -> list[dict]:
    """A JSONL file of requests, e.g. {"image": ..., "question": ...} per line."""
    rows = []
    for n, row in iter_jsonl(path, "requests"):
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{n}: each line needs the keys {', '.join(required)}; missing {', '.join(missing)}")
        rows.append(row)
    return rows


def request_items(requests: str | None, image: str | None, text: str | None, key: str) -> list[dict]:
    """The items of a one-image command: a JSONL of requests, or one --image with its text."""
    if requests:
        return read_requests(requests, ("image", key))
    if image is not None and text is not None:
        return [{"image": image, key: text}]
    raise DataError(f"give --image and --{key}, or --requests FILE.jsonl")
