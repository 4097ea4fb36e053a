"""The contracts every model part meets.

* Encoders return `Features(tokens (B, N, D), mask (B, N), pooled (B, D))` and expose `dim`.
* Fusion modules take `(image: Features, text: Features)` and return text-aligned `Features`:
  one fused token per text position (so an MLM head can sit on top) plus a pooled vector.
* Every registered part is a `Component`: it remembers the spec it was built from and can
  export a spec that rebuilds it *without* downloading or reading pretrained files (the
  weights then come from the checkpoint's `model.safetensors`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """Token features of one modality (or of a fusion).

    tokens: (B, N, D) float; mask: (B, N) bool, True where a token is real; pooled: (B, D).
    positions: (B, N, 2) or (N, 2), the (x, y) centre of each image token as a fraction of the
        image's width and height (0..1), for encoders whose tokens are places (a conv grid);
        None where tokens have no place (text, a CLS token).
    attention: (B, K, N) logits of a fusion's K question-guided looks over the image tokens,
        for fusions that look (`hop_attention`); objectives supervise them, explanations show them.
    attributes: (B, N, A) what a model's object heads read on each image token (per attribute
        a softmax over none + its values, concatenated), set by the families that have heads.
    embeddings: (B, T, D) the text tokens' input (word) embeddings, before any context: a
        fusion can read which words a question holds from them directly.
    colorblind: (B, N, K) the tokens of a colour-blind stream of the image tower (`conv_stem`
        `colorblind`), which the object heads of attributes other than colour read.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    positions: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    attributes: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    colorblind: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]


class Component(nn.Module):
    """An nn.Module built from a registered spec; `export_spec()` rebuilds it offline."""

    build_spec: dict

    def export_spec(self) -> dict:
        spec = dict(getattr(self, "build_spec", {}))
        return spec


def build(registry, spec: dict, where: str, **injected) -> nn.Module:
    """Build a registered Component and remember its spec (minus the injected arguments)."""
    module = registry.build(spec, where, **injected)
    module.build_spec = dict(spec)
    return module


def select(f: Features, index: torch.Tensor) -> Features:
    """The rows `index` (B',) of batched Features (shared positions stay shared)."""
    pos = f.positions if f.positions is None or f.positions.dim() == 2 else f.positions[index]
    rows = [None if t is None else t[index] for t in (f.attention, f.attributes, f.embeddings, f.colorblind)]
    return Features(f.tokens[index], f.mask[index], f.pooled[index], pos, *rows)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. tokens (B, N, D), mask (B, N) -> (B, D)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def grid_positions(h: int, w: int, device=None) -> torch.Tensor:
    """(h*w, 2) centres (x, y) of an h x w grid's cells as fractions of the image, row-major."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(h * w, 2)
