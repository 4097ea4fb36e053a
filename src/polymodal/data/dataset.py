"""PyTorch datasets over records: images decoded with load_image, bad records skipped and counted.

* `RecordDataset` (map-style) wraps a map-style reader (JSONL, COCO, VQA, folder, shapes, hf).
* `StreamDataset` (iterable) wraps a streaming reader (WebDataset shards); each DataLoader
  worker (and each process of a distributed run) reads its own shards.

Both are deterministic under a seed: per-item random choices (which caption of five) come from
`item["_seed"]`, derived from (seed, epoch, index), so collators give the same batch whatever
the number of workers. A bad record (unreadable image, broken JSON line, a field its task needs
missing) never stops training: it is skipped, counted by kind in `dataset.skips` (shared with the
worker processes; `skips.summary()` is the report at the end of a run) and logged.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import zlib
from typing import Any, Iterator, Literal

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from polymodal.data.fields import boxes_outside, task_problems
from polymodal.data.formats import Entry, Reader, open_dataset
from polymodal.data.images import MAX_PIXELS, load_image
from polymodal.errors import DataError

log = logging.getLogger(__name__)

OnError = Literal["replace", "drop", "raise"]
_MAX_TRIES = 16  # consecutive bad records tolerated before giving up
_LOGGED = 5  # bad records logged in full (the rest only counted)


class BadRecord(DataError):
    """A record that cannot be used, with its `kind` ("unreadable image", "missing field", ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Skips:
    """The bad records skipped so far, by kind ("unreadable image", "missing field", ...): how
    many, and the first of each, for the report at the end of training or evaluation.

    Shared with DataLoader worker processes (shared memory, like a counter would need), and a
    record is counted once however often it is met: a bad training record comes up every
    epoch, and in "replace" mode also as the stand-in for a bad neighbour.

    Args:
        n: the number of records (map-style datasets; records are told apart by index).
    """

    _TABLE_BYTES = 16384  # the JSON {kind: [count, first]}: a handful of kinds, a line each

    def __init__(self, n: int = 0):
        ctx = mp.get_context("spawn")
        self._seen = ctx.Array("B", max(1, (n + 7) // 8), lock=False)  # one bit per record index
        self._table = ctx.Array("c", self._TABLE_BYTES)  # read and written under its lock

    def add(self, kind: str, message: str, index: int | None = None) -> int:
        """Count a bad record (once per `index`, when given); returns how many were skipped so far."""
        with self._table.get_lock():
            if index is not None:
                byte, bit = divmod(index, 8)
                if self._seen[byte] >> bit & 1:
                    return self.count
                self._seen[byte] |= 1 << bit
            table = self.by_kind()
            count, first = table.get(kind, (0, message[:300]))
            table[kind] = (count + 1, first)
            data = json.dumps(table, ensure_ascii=False).encode()
            if len(data) >= self._TABLE_BYTES:  # never in practice; the counts matter more than the examples
                data = json.dumps({k: (c, "") for k, (c, _) in table.items()}).encode()
            self._table.value = data
            return sum(c for c, _ in table.values())

    def by_kind(self) -> dict[str, tuple[int, str]]:
        """{kind: (count, the first such record: where, id and what is wrong)}."""
        raw = self._table.value
        return {k: tuple(v) for k, v in json.loads(raw).items()} if raw else {}

    @property
    def count(self) -> int:
        return sum(c for c, _ in self.by_kind().values())

    def summary(self) -> str:
        """'skipped 3 records: 2 missing field (first: FILE:LINE id=7: no caption ...), 1 unreadable
        image (first: ...)'; empty when nothing was skipped."""
        table = self.by_kind()
        if not table:
            return ""
        n = sum(c for c, _ in table.values())
        parts = [f"{c} {kind} (first: {first})" for kind, (c, first) in sorted(table.items(), key=lambda kv: -kv[1][0])]
        return f"skipped {n} record{'s' if n > 1 else ''}: " + ", ".join(parts)

    def __getstate__(self):
        # Worker processes get the shared memory itself; any other copy (deepcopy, pickling to
        # disk) gets what was counted so far in arrays of its own.
        from multiprocessing.context import get_spawning_popen

        if get_spawning_popen() is not None:
            return {"seen": self._seen, "table": self._table}
        return {"n": len(self._seen) * 8, "seen_bytes": bytes(self._seen), "table_bytes": self._table.value}

    def __setstate__(self, state):
        if "seen" in state:
            self._seen, self._table = state["seen"], state["table"]
            return
        self.__init__(state["n"])
        self._seen[:] = state["seen_bytes"]
        self._table.value = state["table_bytes"]


def checked_record(e: Entry, task=None) -> dict:
    """The record of entry `e`; a BadRecord when it could not be read ("unreadable record") or
    lacks a field `task` needs / holds a bad value there ("missing field", "empty text", ...)."""
    if e.error is not None:
        raise BadRecord("unreadable record", f"{e.where}: {e.error}")
    problems = task_problems(e.record, task) if task is not None else []
    if problems:
        raise BadRecord(problems[0][0], f"{_place(e)}: " + "; ".join(message for _, message in problems))
    return e.record


def checked_image(image, e: Entry, max_pixels: int = MAX_PIXELS):
    """`load_image(image)`; a BadRecord ("missing image" / "unreadable image") naming the record."""
    try:
        return load_image(image, max_pixels=max_pixels)
    except DataError as exc:
        missing = isinstance(image, str) and not os.path.isfile(image)
        raise BadRecord("missing image" if missing else "unreadable image", f"{_place(e)}: {exc}") from None


def _place(e: Entry) -> str:
    """'FILE:LINE id=ID': where a record is, for messages."""
    return f"{e.where} id={e.record['id']}" if e.record and "id" in e.record else e.where


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's random choices; the same for any worker layout."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


class _Decoding:
    """Shared by both datasets: turn an Entry into an item, or count it as skipped (`skips`)."""

    def _init(self, decode: bool, seed: int, max_pixels: int, task, n: int = 0) -> None:
        self.decode, self.seed, self.max_pixels, self.task = decode, seed, max_pixels, task
        self.epoch = 0
        self.skips = Skips(n)

    @property
    def skipped(self) -> int:
        """How many bad records were skipped so far (in this process and its workers)."""
        return self.skips.count

    def set_epoch(self, epoch: int) -> None:
        """Vary the per-item random choices (and the stream shuffle) from epoch to epoch."""
        self.epoch = epoch

    def _item(self, e: Entry, index: int) -> dict:
        """The item of an entry: the record with `image` decoded to an RGB PIL image; a BadRecord
        when the entry could not be read, lacks what the task needs, or its image is unreadable."""
        item = dict(checked_record(e, self.task))
        if self.decode and item.get("image") is not None:
            item["image_path"] = item["image"] if isinstance(item["image"], str) else e.where
            item["image"] = checked_image(item["image"], e, self.max_pixels)
            outside = boxes_outside(item, item["image"].size)
            if outside:
                raise BadRecord("box outside image", f"{_place(e)}: " + "; ".join(outside))
        item["_seed"] = item_seed(self.seed, self.epoch, index)
        return item

    def _skip(self, exc: DataError, index: int | None) -> None:
        n = self.skips.add(getattr(exc, "kind", "bad record"), str(exc), index)
        if n <= _LOGGED:
            log.warning("skipped a bad record (%d so far): %s", n, exc)
        elif n == _LOGGED + 1:
            log.warning("more bad records are being skipped; they are counted and reported at the end")


class RecordDataset(_Decoding, Dataset):
    """Map-style dataset of records with decoded images.

    Args:
        reader: a map-style reader (from `open_dataset`), or a list of records.
        decode: decode `image` into an RGB PIL image (False leaves paths as they are).
        on_error: what a bad record becomes. "replace": the next good record (training: batches
            keep their size and every process steps alike); "drop": None, which the collators
            leave out (evaluation: no record counted twice); "raise": a DataError.
        seed: seeds the per-item random choices.
        max_pixels: the decompression-bomb limit.
        task: a record that lacks this task's fields (or holds a bad value in one) is bad too
            (a `polymodal.tasks.Task`; None: only unreadable records and images are bad).
    """

    def __init__(self, reader: Reader | list[dict], decode: bool = True, on_error: OnError = "replace",
                 seed: int = 0, max_pixels: int = MAX_PIXELS, task=None):
        if isinstance(reader, Reader) and reader.streaming:
            raise DataError(f"{reader.describe()} is streamed; use StreamDataset")
        if on_error not in ("replace", "drop", "raise"):
            raise ValueError(f"on_error must be replace, drop or raise, got {on_error!r}")
        self.reader, self.on_error = reader, on_error
        self._init(decode, seed, max_pixels, task, len(reader))

    def __len__(self) -> int:
        return len(self.reader)

    def _entry(self, i: int) -> Entry:
        if isinstance(self.reader, Reader):
            return self.reader.entry(i)
        return Entry(f"record {i}", self.reader[i])

    def __getitem__(self, i: int) -> dict | None:
        n = len(self)
        for attempt in range(min(_MAX_TRIES, n)):
            j = (i + attempt) % n
            try:
                return self._item(self._entry(j), j)
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                self._skip(exc, j)
                if self.on_error == "drop":
                    return None
        run = "every record is bad" if n <= _MAX_TRIES else f"{_MAX_TRIES} bad records in a row from index {i}"
        raise DataError(f"{run} ({self.skips.summary()}); run `polymodal data validate` on the data")


class StreamDataset(_Decoding, IterableDataset):
    """Iterable dataset over a streaming reader (WebDataset shards).

    Shards are divided among DataLoader workers and, when `rank`/`world_size` are given, among
    processes, so no record is read twice. Leave rank/world_size unset under Accelerate's default
    for iterable datasets (process 0 reads and dispatches the batches); set them when every
    process reads for itself (`dispatch_batches=False`).

    Args:
        reader: a streaming reader (from `open_dataset`).
        decode: decode images into RGB PIL images.
        seed: seeds per-item choices and the shuffle buffer.
        shuffle_buffer: shuffle within a buffer of this many records (0: keep shard order).
        rank, world_size: this process's share of the shards (default: all of them).
        max_pixels: the decompression-bomb limit.
        task: records lacking this task's fields are bad too (see RecordDataset).
    """

    def __init__(self, reader: Reader, decode: bool = True, seed: int = 0, shuffle_buffer: int = 0,
                 rank: int | None = None, world_size: int | None = None, max_pixels: int = MAX_PIXELS,
                 task=None):
        self.reader, self.shuffle_buffer = reader, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._init(decode, seed, max_pixels, task)

    def _share(self) -> tuple[int, int]:
        rank, world = (self.rank, self.world_size) if self.world_size else (0, 1)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def __iter__(self) -> Iterator[dict]:
        part, parts = self._share()
        items = self._items(part, parts)
        if self.shuffle_buffer > 1:
            items = _buffer_shuffle(items, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:{part}"))
        yield from items

    def _items(self, part: int, parts: int) -> Iterator[dict]:
        for n, e in enumerate(self.reader.entries(part, parts)):
            try:
                yield self._item(e, n * parts + part)
            except DataError as exc:
                self._skip(exc, None)  # streamed: no index to tell a record met twice


def _buffer_shuffle(items: Iterator[Any], size: int, rnd: random.Random) -> Iterator[Any]:
    buf: list = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            k = rnd.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    rnd.shuffle(buf)
    yield from buf


def build_dataset(spec, split: str | None = None, shapes_file: str | None = None,
                  **kwargs) -> RecordDataset | StreamDataset:
    """Open a dataset spec as a torch dataset: map-style, or streamed for WebDataset shards.

    Args:
        spec: a dataset spec (see polymodal.data.formats).
        split: which split.
        shapes_file: the shapes-world record file to read when the spec is a shapes directory
            that names none (a task's `shapes_file`: captions, vqa, classify, ground, translate).
        kwargs: passed to RecordDataset / StreamDataset (decode, seed, on_error, shuffle_buffer, ...).
    """
    reader = open_dataset(spec, split, shapes_file=shapes_file)
    if reader.streaming:
        kwargs.pop("on_error", None)
        return StreamDataset(reader, **kwargs)
    kwargs.pop("shuffle_buffer", None)
    return RecordDataset(reader, **kwargs)


__all__ = ["RecordDataset", "StreamDataset", "Skips", "BadRecord", "build_dataset", "checked_record",
           "checked_image", "item_seed"]
