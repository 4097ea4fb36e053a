"""Data plumbing of the trainer: opening dataset specs, a deterministic sharded batch order,
and the first-batch check.

The order of training samples depends only on (seed, epoch): every epoch is one permutation,
cut into global batches of `batch_size x processes`, and process r takes slice r of each. So
a resumed run sees exactly the batches the interrupted one would have, and N processes with
per-process batch b see the same global batches as 1 process with batch N x b.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from polymodal.errors import ConfigError, DataError


def open_records(spec: str, split: str, where: str, seed: int, train: bool, task=None) -> Sequence[dict]:
    """The map-style torch dataset of `spec` / `split` (images decoded by the data module).

    A bad record (unreadable, its image unreadable, or lacking a field `task` needs) is replaced
    by the next good one in training (batches keep their size) and dropped in validation
    (nothing counted twice); `dataset.skips` counts them by kind for the report at the end. A
    shapes-world directory reads the task's record file (`Task.shapes_file`).
    """
    from polymodal.data.dataset import RecordDataset, build_dataset

    try:
        data = build_dataset(spec, split, seed=seed, on_error="replace" if train else "drop",
                             shapes_file=task and task.shapes_file, task=task)
    except (ConfigError, DataError) as exc:
        if str(exc).startswith(where):
            raise
        raise type(exc)(f"{where}: {exc}") from exc
    if not isinstance(data, RecordDataset):
        raise ConfigError(f"{where}: {spec!r} is streamed (WebDataset shards); the trainer needs a map-style "
                          "dataset (exact resume and data order); use a JSONL / COCO / shapes / folder spec")
    if len(data) == 0:
        raise DataError(f"{where}: dataset {spec!r} split {split!r} has no records")
    return data


def plain_records(data: Sequence[dict]) -> list[dict | None]:
    """The records of a dataset as read (images not decoded), None for one that cannot be read."""
    if not hasattr(data, "reader"):
        return [data[i] for i in range(len(data))]
    reader = data.reader
    return [reader.entry(i).record if hasattr(reader, "entry") else reader[i] for i in range(len(data))]


def usable_records(data: Sequence[dict], task) -> list[dict]:
    """The records `task` can use (readable, with the fields it needs): what its `labels()` reads."""
    from polymodal.data.fields import task_problems

    return [r for r in plain_records(data) if r is not None and not task_problems(r, task)]


def skip_report(data) -> dict | None:
    """{"count", "summary"} of the bad records a dataset skipped so far; None when it skipped none."""
    skips = getattr(data, "skips", None)
    if skips is None or not skips.count:
        return None
    return {"count": skips.count, "summary": skips.summary()}


def image_keys(data: Sequence[dict]) -> list:
    """Each record's image key (`image_id`, else the `image` path): what `group_by_image` groups by.
    A record that cannot be read is a group of its own."""
    return [(r.get("image_id") or str(r.get("image"))) if r is not None else ("unreadable", i)
            for i, r in enumerate(plain_records(data))]


def micro_batches_per_epoch(n: int, batch_size: int, world: int, accum: int) -> int:
    """Full global micro-batches in one epoch, rounded down to whole optimizer steps."""
    return (n // (batch_size * world)) // accum * accum


class EpochBatches(torch.utils.data.Sampler):
    """This process's batches of one epoch, starting at micro-batch `start`.

    Args:
        n: number of records. batch_size: per process. world, rank: process count and index.
        seed, epoch: define the permutation. accum: gradient-accumulation steps (the epoch is cut
            to whole optimizer steps). start: micro-batches already consumed (resume).
        groups: a group key per record (its image): the permutation shuffles the groups and keeps
            each group's records next to each other, so a batch holds all questions of its images
            and the collator encodes each image once (`data.group_by_image`).
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int,
                 accum: int = 1, start: int = 0, groups: Sequence | None = None):
        self.n, self.bs, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.epoch, self.start = seed, epoch, start
        self.count = micro_batches_per_epoch(n, batch_size, world, accum)
        self.members = None
        if groups is not None:
            index: dict = {}
            for i, key in enumerate(groups):
                index.setdefault(key, []).append(i)
            self.members = list(index.values())

    def __len__(self) -> int:
        return max(0, self.count - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.members is None:
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.tensor([i for j in torch.randperm(len(self.members), generator=g).tolist()
                                 for i in self.members[j]])
        width = self.bs * self.world                                       # one global micro-batch
        for k in range(self.start, self.count):
            lo = k * width + self.rank * self.bs
            yield perm[lo:lo + self.bs].tolist()


def shard(n: int, world: int, rank: int, limit: int | None = None) -> list[int]:
    """Validation indices of this process: every world-th record (no padding, no duplicates)."""
    return list(range(min(n, limit) if limit else n))[rank::world]


def check_batch(collate: Callable, records: Sequence[dict], requires: set[str], where: str) -> None:
    """Collate two records and check the batch has every key the objectives read."""
    try:
        batch = collate([records[i] for i in range(min(2, len(records)))])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: the records cannot be turned into a batch ({type(exc).__name__}: {exc}); "
                        f"first record: {_short(records[0])}") from exc
    missing = sorted(k for k in requires if batch.get(k) is None)
    if missing:
        raise DataError(f"{where}: batches lack {', '.join(missing)}, which the objectives need; the "
                        f"collator made {', '.join(sorted(batch))} from records like {_short(records[0])}")


def _short(record) -> str:
    text = repr({k: (v if isinstance(v, (str, int, float)) else type(v).__name__)
                 for k, v in dict(record).items()}) if isinstance(record, dict) else repr(record)
    return text[:200]
