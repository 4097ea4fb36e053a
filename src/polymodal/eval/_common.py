"""Plumbing shared by the metric modules: the Metric base, id alignment, array and text helpers."""
from __future__ import annotations

import logging
import re
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from polymodal.errors import DataError

logger = logging.getLogger(__name__)


class Metric:
    """A configured metric. Build it from a config (`METRICS.build({"type": "vqa"})`), then call it
    with a task's predictions and references; it returns a flat dict of floats (counts included).

    `main` names the key that model selection (best checkpoint, early stopping) should watch;
    `higher_is_better` says which way. `close()` frees external resources (a Java process).
    """

    main: str = "accuracy"
    higher_is_better: bool = True

    def __call__(self, **inputs: Any) -> dict[str, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release external resources; the metric may not be called afterwards. Default: none held."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def align(predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
          what: str) -> list[Hashable]:
    """The ids to score: every predicted id, in prediction order.

    A predicted id without a reference is an error (the two files do not belong together);
    references without a prediction are left out with a warning, as COCO's evaluation does.
    """
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise DataError(f"{what}: predictions and references must be mappings id -> value, got "
                        f"{type(predictions).__name__} and {type(references).__name__}")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise DataError(f"{what}: {len(missing)} predicted id(s) have no reference, e.g. "
                        f"{missing[:3]!r}; check that predictions and references come from the same split")
    if not predictions:
        raise DataError(f"{what}: no predictions to score")
    unpredicted = len(references) - len(predictions)
    if unpredicted > 0:
        logger.warning("%s: %d reference id(s) have no prediction and are not scored", what, unpredicted)
    return list(predictions)


def as_numpy(x: Any, what: str, dtype=np.float64) -> np.ndarray:
    """A numpy copy of a list, array or torch tensor (any device, bf16 included)."""
    if hasattr(x, "detach"):  # torch tensor: numpy() cannot take bf16, so go through float32
        x = x.detach().float().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what}: expected numbers, got {type(x).__name__} ({e})") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    return arr


def as_reference_list(value: Any, what: str) -> list[str]:
    """One reference or a list of them -> a non-empty list of strings."""
    refs = [value] if isinstance(value, str) else list(value)
    if not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{what}: expected a string or a non-empty list of strings, got {value!r}")
    return refs


# CJK ideographs (basic + extension A + compatibility) are words of their own; other letters and
# digits group into runs. This is the character-level split used for Chinese captions and for
# finding vocabulary words in Chinese text.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_OR_CJK_CHAR = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def words_and_cjk_chars(text: str) -> list[str]:
    """Lower-cased tokens: each CJK character alone, runs of other letters/digits together.

    Punctuation and whitespace are dropped: "红色的圆，在左边。" -> 红 色 的 圆 在 左 边;
    "a red T恤" -> a, red, t, 恤.
    """
    return _WORD_OR_CJK_CHAR.findall(text.lower())


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
