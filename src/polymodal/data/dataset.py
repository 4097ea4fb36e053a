"""PyTorch datasets over records: images decoded with load_image, bad records skipped and counted.

* `RecordDataset` (map-style) wraps a map-style reader (JSONL, COCO, VQA, folder, shapes, hf).
* `StreamDataset` (iterable) wraps a streaming reader (WebDataset shards); each DataLoader
  worker (and each process of a distributed run) reads its own shards.

Both are deterministic under a seed: per-item random choices (which caption of five) come from
`item["_seed"]`, derived from (seed, epoch, index), so collators give the same batch whatever
the number of workers. A bad record (unreadable image, broken JSON line) never stops training:
it is skipped, counted in `dataset.skipped` (shared with the worker processes) and logged.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import random
import zlib
from typing import Any, Iterator, Literal

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from polymodal.data.formats import Entry, Reader, open_dataset
from polymodal.data.images import MAX_PIXELS, load_image
from polymodal.errors import DataError

log = logging.getLogger(__name__)

OnError = Literal["replace", "drop", "raise"]
_MAX_TRIES = 16  # consecutive bad records tolerated before giving up
_LOGGED = 5  # bad records logged in full (the rest only counted)


class _Counter:
    """An int shared with DataLoader worker processes (a plain attribute would stay in the worker)."""

    def __init__(self) -> None:
        self._value = mp.get_context("spawn").Value("q", 0)

    def add(self, k: int = 1) -> int:
        with self._value.get_lock():
            self._value.value += k
            return self._value.value

    @property
    def value(self) -> int:
        return int(self._value.value)

    def __getstate__(self):
        # Worker processes get the shared value itself; any other copy (deepcopy, pickling to
        # disk) gets the count so far in a fresh counter of its own.
        from multiprocessing.context import get_spawning_popen

        return {"shared": self._value} if get_spawning_popen() is not None else {"count": self.value}

    def __setstate__(self, state):
        if "shared" in state:
            self._value = state["shared"]
        else:
            self._value = mp.get_context("spawn").Value("q", state["count"])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's random choices; the same for any worker layout."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


class _Decoding:
    """Shared by both datasets: turn an Entry into an item or count it as skipped."""

    def _init(self, decode: bool, seed: int, max_pixels: int) -> None:
        self.decode, self.seed, self.max_pixels = decode, seed, max_pixels
        self.epoch = 0
        self._skipped = _Counter()

    @property
    def skipped(self) -> int:
        """How many bad records were skipped so far (in this process and its workers)."""
        return self._skipped.value

    def set_epoch(self, epoch: int) -> None:
        """Vary the per-item random choices (and the stream shuffle) from epoch to epoch."""
        self.epoch = epoch

    def _item(self, e: Entry, index: int) -> dict:
        """The item of an entry: the record with `image` decoded to an RGB PIL image."""
        if e.error is not None:
            raise DataError(f"{e.where}: {e.error}")
        item = dict(e.record)
        if self.decode and item.get("image") is not None:
            item["image_path"] = item["image"] if isinstance(item["image"], str) else e.where
            try:
                item["image"] = load_image(item["image"], max_pixels=self.max_pixels)
            except DataError as exc:
                raise DataError(f"{e.where}: {exc}") from None
        item["_seed"] = item_seed(self.seed, self.epoch, index)
        return item

    def _skip(self, exc: Exception) -> None:
        n = self._skipped.add()
        if n <= _LOGGED:
            log.warning("skipped a bad record (%d so far): %s", n, exc)
        elif n == _LOGGED + 1:
            log.warning("more bad records are being skipped; see dataset.skipped for the count")


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
    """

    def __init__(self, reader: Reader | list[dict], decode: bool = True, on_error: OnError = "replace",
                 seed: int = 0, max_pixels: int = MAX_PIXELS):
        if isinstance(reader, Reader) and reader.streaming:
            raise DataError(f"{reader.describe()} is streamed; use StreamDataset")
        if on_error not in ("replace", "drop", "raise"):
            raise ValueError(f"on_error must be replace, drop or raise, got {on_error!r}")
        self.reader, self.on_error = reader, on_error
        self._init(decode, seed, max_pixels)

    def __len__(self) -> int:
        return len(self.reader)

    def _entry(self, i: int) -> Entry:
        if isinstance(self.reader, Reader):
            return self.reader.entry(i)
        return Entry(f"record {i}", self.reader[i])

    def __getitem__(self, i: int) -> dict | None:
        n = len(self)
        for attempt in range(_MAX_TRIES):
            j = (i + attempt) % n
            try:
                return self._item(self._entry(j), j)
            except DataError as exc:
                if self.on_error == "raise":
                    raise
                self._skip(exc)
                if self.on_error == "drop":
                    return None
        raise DataError(f"{_MAX_TRIES} bad records in a row from index {i}; run `polymodal data validate` on the data")


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
    """

    def __init__(self, reader: Reader, decode: bool = True, seed: int = 0, shuffle_buffer: int = 0,
                 rank: int | None = None, world_size: int | None = None, max_pixels: int = MAX_PIXELS):
        self.reader, self.shuffle_buffer = reader, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self._init(decode, seed, max_pixels)

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
                self._skip(exc)


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


__all__ = ["RecordDataset", "StreamDataset", "build_dataset", "item_seed"]
