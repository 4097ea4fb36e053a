"""Reading JSON-lines files that users write (requests, predictions): one place for the errors."""
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
