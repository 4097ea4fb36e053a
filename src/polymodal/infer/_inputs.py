"""Expanding command-line inputs (paths, folders, globs, JSONL request files) into items."""
from __future__ import annotations

import glob
import json
from pathlib import Path

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
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the requests file ({exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not a JSON object ({exc})") from exc
        missing = [k for k in required if k not in row]
        if not isinstance(row, dict) or missing:
            raise DataError(f"{path}:{n}: each line needs the keys {', '.join(required)}; missing {', '.join(missing)}")
        rows.append(row)
    return rows
