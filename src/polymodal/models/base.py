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
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

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


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens. tokens (B, N, D), mask (B, N) -> (B, D)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
