"""Reading JSON-lines files that users write (requests, predictions), and JSON arrays of objects
(the official COCO / VQA result files): one place for the errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from polymodal.errors import DataError


def jsonl_rows(path: str | Path, what: str) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, object) for each non-empty line of `path`, or (line number, DataError saying
    what is wrong; the caller adds the place) for a line that is not a JSON object, so a reader can
    fail that line alone and go on.

    Lines are split on \\n / \\r only (a JSON string may hold U+2028) and decoded one by one: a
    stray byte that is not UTF-8 spoils its own line, not the file. A UTF-8 byte-order mark is
    allowed. A file that cannot be read at all is a DataError.

    Args:
        what: what the file holds, for messages ("requests", "predictions").
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc})") from exc
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield n, DataError(f"not UTF-8 text ({exc}); save the file as UTF-8")
            continue
        line = line.lstrip("\ufeff") if n == 1 else line
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield n, DataError(f"not JSON ({exc})")
            continue
        yield n, row if isinstance(row, dict) else DataError(f"not a JSON object but {type(row).__name__}")


def iter_jsonl(path: str | Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of `path`; the first bad line is a DataError
    naming the file and line (see `jsonl_rows`).

    Args:
        what: what the file holds, for messages ("requests", "predictions").
    """
    for n, row in jsonl_rows(path, what):
        if isinstance(row, DataError):
            raise DataError(f"{path}:{n}: {row}")
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
