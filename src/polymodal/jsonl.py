"""Reading JSON-lines files that users write (requests, predictions), and JSON arrays of objects
(the official COCO / VQA result files): one place for the errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from polymodal.errors import DataError


def iter_jsonl(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of `path`; a DataError names the file and line.

    Args:
        what: what the file holds, for messages ("requests", "predictions").
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: not a JSON object")
        yield n, row


def iter_json_objects(path: str | Path, what: str) -> Iterator[tuple[str, dict]]:
    """(where, object) for each object of a JSON Lines file or of a JSON array of objects.

    The content decides: a file whose first non-space character is "[" is one JSON array (the
    official COCO caption and VQA result files: `[{"image_id": 42, "caption": "..."}, ...]`),
    anything else JSON Lines. `where` names the place for messages: "FILE:LINE" or "FILE: item K"
    (K counted from 1). A DataError names the file and the line or item.

    Args:
        what: what the file holds, for messages ("predictions").
    """
    if _first_char(path, what) != "[":
        for n, row in iter_jsonl(path, what):
            yield f"{path}:{n}", row
        return
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc})") from exc
    except ValueError as exc:
        raise DataError(f"{path}: starts with '[' but is not a JSON array ({exc}); write one JSON array "
                        "of objects, or JSON Lines (one object per line)") from exc
    for k, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {k} of {len(items)} is not a JSON object: {item!r:.80}")
        yield f"{path}: item {k}", item


def _first_char(path: str | Path, what: str) -> str:
    """The first non-space character of a text file ("" when there is none), read in small pieces."""
    try:
        with open(path, encoding="utf-8") as f:
            while piece := f.read(4096):
                if piece.strip():
                    return piece.lstrip()[0]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc})") from exc
    return ""
