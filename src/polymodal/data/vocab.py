"""Closed vocabularies of answers and labels, and VQA-style answer normalisation."""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

from polymodal.errors import DataError
# One answer normalisation for training targets and scoring alike: the official VQAv2 one.
from polymodal.data.answers import normalize_answer  # noqa: F401


class Vocab:
    """An ordered list of strings with their indices (answer vocabulary, class labels).

    Args:
        tokens: the entries, in index order.
    """

    def __init__(self, tokens: Iterable[str]):
        self.tokens = [str(t) for t in tokens]
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            dup = [t for t, k in Counter(self.tokens).items() if k > 1]
            raise DataError(f"vocabulary has duplicate entries: {dup[:5]}")

    @classmethod
    def build(cls, values: Iterable, max_size: int | None = None, min_count: int = 1,
              order: str = "frequency", normalize: Callable[[str], str] | None = None) -> "Vocab":
        """A vocabulary of the values seen (e.g. every train answer, every train label).

        Args:
            values: strings (or lists of strings, flattened).
            max_size: keep the most frequent this many.
            min_count: drop values seen fewer times.
            order: "frequency" (most common first, ties alphabetical) or "sorted".
            normalize: applied to each value first (e.g. normalize_answer).
        """
        counts: Counter = Counter()
        for v in values:
            for x in (v if isinstance(v, (list, tuple)) else [v]):
                x = str(x)
                counts[normalize(x) if normalize else x] += 1
        kept = [(t, k) for t, k in counts.items() if k >= min_count and t != ""]
        kept.sort(key=lambda tk: (-tk[1], tk[0]))
        if max_size is not None:
            kept = kept[:max_size]
        tokens = [t for t, _ in kept]
        return cls(sorted(tokens) if order == "sorted" else tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token) -> bool:
        return str(token) in self._index

    def index(self, token, default: int | None = None) -> int:
        """Index of `token`; `default` (or a DataError naming it) when it is not in the vocabulary."""
        i = self._index.get(str(token))
        if i is None:
            if default is not None:
                return default
            raise DataError(f"{token!r} is not in the vocabulary ({len(self)} entries, e.g. {self.tokens[:5]})")
        return i

    def __getitem__(self, i: int) -> str:
        return self.tokens[i]

    def to_list(self) -> list[str]:
        return list(self.tokens)

    def __repr__(self) -> str:
        return f"Vocab({len(self)}: {self.tokens[:6]}{'…' if len(self) > 6 else ''})"
