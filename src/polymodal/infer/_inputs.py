"""Expanding command-line inputs (paths, folders, globs, JSONL request files) into items."""
from __future__ import annotations

import glob
from pathlib import Path

from polymodal._jsonl import iter_jsonl
from polymodal.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand_images(args: list[str]) -> list[str]:
    """Each argument is a file, a folder (its images, sorted, recursively) or a glob pattern."""
    out: list[str] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in a for ch in "*?["):
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
