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


def open_records(spec: str, split: str, where: str, task: str | None = None, seed: int = 0) -> Sequence[dict]:
    """The records of dataset `spec` / `split` for `task`, as a map-style dataset.

    Images are decoded by the dataset (robustly): a record whose image is missing or unreadable
    is replaced by the next good one and counted (`dataset.skipped`), so one bad file never
    stops a run. A shapes-world directory reads the task's record file.
    """
    from polymodal.data import open_dataset
    from polymodal.data.dataset import RecordDataset

    try:
        reader = open_dataset(spec, split, where=where, task=task)
    except (ConfigError, DataError) as exc:
        if str(exc).startswith(where):
            raise
        raise type(exc)(f"{where}: {exc}") from exc
    if getattr(reader, "streaming", False):
        reader = list(reader)  # a stream: materialise the (small) records; images stay as paths
    if len(reader) == 0:
        raise DataError(f"{where}: dataset {spec!r} split {split!r} has no records")
    return RecordDataset(reader, decode=True, on_error="replace", seed=seed)


def infer_labels(task: str, records: Sequence[dict]) -> list[str]:
    """The classifier's output names from the train records: VQA answers (normalised, most
    common first) or class labels (sorted)."""
    from polymodal.data.collate import answer_vocab, label_vocab

    recs = [records.reader[i] if hasattr(records, "reader") else records[i] for i in range(len(records))]
    vocab = answer_vocab(recs) if task == "vqa" else label_vocab(recs)
    if len(vocab) < 2:
        raise DataError(f"the training data has {len(vocab)} distinct {'answers' if task == 'vqa' else 'labels'}; "
                        "a classifier needs at least two")
    return vocab.tokens


def default_collator(task: str, processor, model, text_field: str | None = None) -> Callable[[list[dict]], dict]:
    """The data module's collator for `task` (records -> batch with the keys of docs/training.md)."""
    try:
        from polymodal.data.collate import make_collator
    except ImportError as exc:
        raise ConfigError(f"task {task!r}: no collator available (polymodal.data.collate is missing); "
                          "pass collate_fn=... to train()") from exc
    kwargs = {"field": text_field} if text_field else {}
    return make_collator(task, processor, labels=getattr(model, "labels", None) or None, **kwargs)


def micro_batches_per_epoch(n: int, batch_size: int, world: int, accum: int) -> int:
    """Full global micro-batches in one epoch, rounded down to whole optimizer steps."""
    return (n // (batch_size * world)) // accum * accum


class EpochBatches(torch.utils.data.Sampler):
    """This process's batches of one epoch, starting at micro-batch `start`.

    Args:
        n: number of records. batch_size: per process. world, rank: process count and index.
        seed, epoch: define the permutation. accum: gradient-accumulation steps (the epoch is cut
            to whole optimizer steps). start: micro-batches already consumed (resume).
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int,
                 accum: int = 1, start: int = 0):
        self.n, self.bs, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.epoch, self.start = seed, epoch, start
        self.count = micro_batches_per_epoch(n, batch_size, world, accum)

    def __len__(self) -> int:
        return max(0, self.count - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
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
