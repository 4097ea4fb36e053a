"""The inputs of every inference front-end (native and Hugging Face models, the CLI, the index):
one image-input normaliser, one image reader, one batching helper, one check of a user's texts
and labels, and expanding command-line inputs (paths, folders, globs, JSONL request files) into
items, where an input that cannot run is an item with an `error` rather than an exception.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from polymodal.jsonl import jsonl_rows
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


def check_text(text: Any, what: str = "text") -> str:
    """`text` when it is a non-empty string of valid Unicode, else a DataError saying what to fix.

    Every front-end checks a user's texts (questions, sentences, texts to embed, labels) here, so
    an empty text or a lone surrogate (half of a UTF-16 pair, e.g. from a JSON `"\\ud800"`) gets
    the same message everywhere.
    """
    if not isinstance(text, str):
        raise DataError(f"{what} should be text, got {type(text).__name__} {text!r}")
    if not text.strip():
        raise DataError(f"{what} is empty; give a non-empty {what}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end].encode("utf-8", "backslashreplace").decode()
        raise DataError(f"{what} holds {bad}, half of a character (a lone surrogate); "
                        "fix the text's encoding") from None
    return text


def check_texts(texts: Any, what: str = "text") -> list[str]:
    """`check_text` on each of `texts` (one string is a list of one); the message names the item."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(texts):
        check_text(t, f"{what} #{i}" if len(texts) > 1 else what)
    return texts


def check_pairs(images: Sequence, texts: Sequence, what: str = "text") -> None:
    """One text per image: a ValueError naming both counts otherwise."""
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} {what}s; give one {what} per image")


def check_labels(labels: Any) -> list[str]:
    """Class names for zero-shot classification: at least one, each a text, none twice."""
    labels = check_texts(labels, "label")
    if not labels:
        raise DataError("give at least one label")
    dup = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if dup is not None:
        raise DataError(f"label {dup!r} is given twice; labels must be distinct")
    return labels


def image_items(args: list[str]) -> list[dict]:
    """Command-line image arguments as items `{"image": path}`: each argument is a file, a folder
    (its images, sorted, recursively) or a glob pattern. A folder without images or a pattern
    matching nothing becomes an item with an `error`; a missing file is found when it is read."""
    items: list[dict] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            items += [{"image": f} for f in found] or [
                {"image": a, "error": f"{a}: no image files in this folder (looked for "
                                      f"{', '.join(sorted(IMAGE_SUFFIXES))})"}]
        elif any(ch in a for ch in "*?[") and not p.exists():
            found = sorted(glob.glob(a, recursive=True))
            items += [{"image": f} for f in found] or [
                {"image": a, "error": f"{a}: no file matches this pattern; check it (quote it so the shell "
                                      "does not expand it first)"}]
        else:
            items.append({"image": a})
    return items


def read_requests(path: str, required: tuple[str, ...]) -> list[dict]:
    """A JSONL file of requests, e.g. {"image": ..., "question": ...} per line, as items.

    A line that is not a JSON object, or lacks a key, becomes an item with an `error` naming
    the file and line; every item carries its place (`_where`, "FILE:LINE") for later messages.
    """
    items: list[dict] = []
    for n, row in jsonl_rows(path, "requests"):
        where = f"{path}:{n}"
        if isinstance(row, DataError):
            items.append({**{k: None for k in required}, "_where": where,
                          "error": f"{where}: {row}; fix or remove this line"})
            continue
        item = {**{k: row.get(k) for k in required}, "_where": where}
        missing = [k for k in required if k not in row]
        if missing:
            item["error"] = (f"{where}: missing {', '.join(missing)}; each line needs "
                             f"{', '.join(required)}")
        items.append(item)
    if not items:
        raise DataError(f"{path}: no requests in this file; write one JSON object per line, "
                        f"e.g. {{\"image\": \"cat.jpg\", \"{required[-1]}\": \"...\"}}")
    return items


def request_items(requests: str | None, image: str | None, text: str | None, key: str) -> list[dict]:
    """The items of a one-image command: a JSONL of requests, or one --image with its text."""
    if requests and (image is not None or text is not None):
        raise ConfigError(f"give --requests FILE.jsonl, or --image and --{key}; not both")
    if requests:
        return read_requests(requests, ("image", key))
    if image is not None and text is not None:
        return [{"image": image, key: text}]
    raise ConfigError(f"give --image and --{key}, or --requests FILE.jsonl")
