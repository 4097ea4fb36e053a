"""Caching what a frozen image tower computes, so each training image is encoded once per run.

A frozen tower in eval mode is a fixed function of its pixels: its features for an image are the
same at every step. `FeatureCache` keys each image of a batch by a hash of its pixel tensor
(content-addressed: an augmented copy is a new image, a repeat in the next epoch or in validation
is found), runs the tower only on the images it has not seen, and keeps the features in memory up
to a byte budget (least recently used out first). Set by `model.feature_cache_gb` (docs/training.md).
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

from polymodal.models.base import Features

log = logging.getLogger(__name__)

_ROW_FIELDS = ("tokens", "mask", "pooled", "attention", "attributes", "embeddings", "colorblind")


class FeatureCache:
    """Per-image features of one frozen tower, keyed by the image's pixels."""

    def __init__(self, tower: nn.Module, max_bytes: int):
        self.tower, self.max_bytes = tower, max_bytes
        self.rows: OrderedDict[bytes, dict] = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    @staticmethod
    def keys(pixel_values: torch.Tensor) -> list[bytes]:
        """One key per image of the batch: a hash of its shape, dtype and pixels."""
        data = pixel_values.detach().to("cpu").contiguous().numpy()
        head = f"{tuple(data.shape[1:])} {pixel_values.dtype}".encode()
        out = []
        for image in data:
            h = hashlib.blake2b(head, digest_size=16)
            h.update(image.tobytes())
            out.append(h.digest())
        return out

    def __call__(self, pixel_values: torch.Tensor, *args, **kwargs) -> Features:
        if args or kwargs or not isinstance(pixel_values, torch.Tensor) or pixel_values.requires_grad:
            return self.tower.cached_forward(pixel_values, *args, **kwargs)
        keys = self.keys(pixel_values)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}     # a repeat in the batch runs once
        todo = [i for k, i in first.items() if k not in self.rows]
        fresh = {}
        if todo:
            self.misses += len(todo)
            with torch.no_grad():
                out = self.tower.cached_forward(pixel_values[todo])
            shared = out.positions is not None and out.positions.dim() == 2
            for j, i in enumerate(todo):
                row = {f: None if getattr(out, f) is None else getattr(out, f)[j].clone() for f in _ROW_FIELDS}
                row["positions"] = out.positions if shared or out.positions is None else out.positions[j].clone()
                row["shared"] = shared
                fresh[keys[i]] = row
        self.hits += len(keys) - len(todo)    # (repeats within a batch count as reused)
        rows = [fresh.get(k) or self.rows[k] for k in keys]
        for k in keys:                      # touched rows move to the young end
            if k in self.rows:
                self.rows.move_to_end(k)
        for k, row in fresh.items():
            self._add(k, row)
        return _stack(rows)

    def _add(self, key: bytes, row: dict) -> None:
        size = _nbytes(row)
        if size > self.max_bytes:
            return
        self.rows[key] = row
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.rows.popitem(last=False)
            self.bytes -= _nbytes(old)


def _nbytes(row: dict) -> int:
    """What a cached row holds in memory (positions shared by every image are not its own)."""
    return sum(t.numel() * t.element_size() for f, t in row.items()
               if isinstance(t, torch.Tensor) and not (f == "positions" and row["shared"]))


def _stack(rows: list[dict]) -> Features:
    def col(field):
        values = [r[field] for r in rows]
        return None if values[0] is None else torch.stack(values)

    first = rows[0]
    positions = first["positions"] if first["shared"] or first["positions"] is None else col("positions")
    return Features(tokens=col("tokens"), mask=col("mask"), pooled=col("pooled"), positions=positions,
                    attention=col("attention"), attributes=col("attributes"), embeddings=col("embeddings"),
                    colorblind=col("colorblind"))


def frozen_image_tower(model: nn.Module) -> nn.Module | None:
    """The model's image tower (`vision`) when it is frozen whole (no parameter trains)."""
    tower = getattr(model, "vision", None)
    if isinstance(tower, nn.Module) and not any(p.requires_grad for p in tower.parameters()):
        return tower
    return None


@contextmanager
def feature_cache_off(model: nn.Module):
    """While inside, the model's image tower computes its features afresh even under
    `cached_frozen_tower`: for views made for one step only (a recoloured copy of the batch),
    which would fill the cache with rows never reused."""
    tower = getattr(model, "vision", None)
    uncached = getattr(tower, "cached_forward", None)
    if uncached is None:
        yield
        return
    cache, tower.forward = tower.forward, uncached
    try:
        yield
    finally:
        tower.forward = cache


@contextmanager
def cached_frozen_tower(model: nn.Module, max_gb: float):
    """While inside, the frozen image tower of `model` answers from a `FeatureCache` of `max_gb`
    GiB (0: no cache), which the context yields (None when there is none). The tower's weights and
    state dict are untouched. The tower must run in eval mode (the trainer keeps frozen parts
    there), so its features do not change."""
    tower = frozen_image_tower(model) if max_gb > 0 else None
    if tower is None:
        yield None
        return
    cache = FeatureCache(tower, int(max_gb * 2 ** 30))
    tower.cached_forward = tower.forward
    tower.forward = cache
    log.info("frozen vision tower: its features are cached (up to %.1f GiB; model.feature_cache_gb)", max_gb)
    try:
        yield cache
    finally:
        tower.forward = tower.cached_forward
        del tower.cached_forward
        log.info("feature cache of the vision tower: %d images encoded, %d reused, %.0f MiB held",
                 cache.misses, cache.hits, cache.bytes / 2 ** 20)
