"""Data plumbing of the trainer: opening dataset specs, a deterministic sharded batch order,
and the first-batch check.

The order of training samples depends only on (seed, epoch): every epoch is one permutation,
cut into global batches of `batch_size x processes`, and process r takes slice r of each. So
a resumed run sees exactly the batches the interrupted one would have, and N processes with
per-process batch b see the same global batches as 1 process with batch N x b.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

import torch

from polymodal.errors import ConfigError, DataError


def open_records(spec: str, split: str, where: str, seed: int, train: bool) -> Sequence[dict]:
    """The map-style torch dataset of `spec` / `split` (images decoded by the data module).

    A bad record is replaced by the next good one in training (batches keep their size) and
    dropped in validation (nothing counted twice).
    """
    try:
        from polymodal.data.dataset import RecordDataset, build_dataset
    except ImportError as exc:
        raise ConfigError(f"{where}: opening dataset specs needs polymodal.data, which this installation "
                          "lacks; pass records from Python: train(cfg, train_records=[...])") from exc
    data = build_dataset(spec, split, seed=seed, on_error="replace" if train else "drop")
    if not isinstance(data, RecordDataset):
        raise ConfigError(f"{where}: {spec!r} is streamed (WebDataset shards); the trainer needs a map-style "
                          "dataset (exact resume and data order); use a JSONL / COCO / shapes / folder spec")
    if len(data) == 0:
        raise DataError(f"{where}: dataset {spec!r} split {split!r} has no records")
    return data


def default_collator(task: str, processor, model) -> Callable[[list[dict]], dict]:
    """polymodal.data's collator for the run's task and model family, in the batch keys of
    docs/training.md (`ContractCollator`)."""
    try:
        from polymodal.data.collate import make_collator
        from polymodal.data.vocab import Vocab
    except ImportError as exc:
        raise ConfigError(f"task {task!r}: no collator available (polymodal.data.collate is missing); "
                          "pass collate_fn=... to train()") from exc
    family = model.build_spec["type"]
    labels = list(getattr(model, "labels", None) or [])
    if task == "vqa" and family == "fusion_encoder":
        inner = make_collator("vqa", processor, answers=Vocab(labels))  # answers in the classifier's order
    elif task == "vqa":
        inner = make_collator("vqa_generate", processor)
    elif task == "classification":
        inner = make_collator("classify", processor, labels=Vocab(labels))
    elif task == "translation":
        inner = make_collator("translate", processor)
    elif task == "captioning" or family == "encoder_decoder":
        inner = make_collator("caption", processor)
    else:  # pretrain / retrieval: image-caption pairs
        inner = make_collator("pretrain", processor)
    return ContractCollator(inner, processor.tokenizer.pad_token_id or 0)


class ContractCollator:
    """A data-module collator whose batches are renamed into the objectives' batch keys.

    `labels` (B, T) token targets (-100 on padding) -> `decoder_input_ids` /
    `decoder_attention_mask`; VQA `targets` -> `answer_scores`, `answer_ids` -> `labels`;
    `image_ids` strings -> int64 (a stable hash, equal across processes).
    """

    def __init__(self, inner: Callable, pad_id: int):
        self.inner, self.pad_id = inner, pad_id

    def __call__(self, items: list) -> dict | None:
        batch = self.inner(items)
        if batch is None:
            return None
        labels = batch.get("labels")
        if isinstance(labels, torch.Tensor) and labels.ndim == 2:  # token targets: [CLS] ... [SEP]
            batch["decoder_input_ids"] = labels.masked_fill(labels == -100, self.pad_id)
            batch["decoder_attention_mask"] = (labels != -100).long()
            del batch["labels"]
        if "targets" in batch:
            batch["answer_scores"] = batch.pop("targets")
            batch["labels"] = batch.pop("answer_ids")
        ids = batch.get("image_ids")
        if isinstance(ids, list):
            batch["image_ids"] = torch.tensor([_stable_id(str(i)) for i in ids], dtype=torch.long)
        return batch


def _stable_id(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


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
