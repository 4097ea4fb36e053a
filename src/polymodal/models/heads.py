"""Task heads: a classifier (classification, VQA answers, ITM), a contrastive projection, an
MLM head. The LM head of generators belongs to the decoder."""
from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """MLP classifier on a pooled vector: Linear -> GELU -> LayerNorm -> Linear. (B, D) -> (B, C)."""

    def __init__(self, in_dim: int, num_labels: int, hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        hidden = hidden or 2 * in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """Linear projection into the shared contrastive space. (B, D) -> (B, E), not normalised."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLMHead(nn.Module):
    """Masked-token prediction on fused text tokens: (B, T, D) -> (B, T, V)."""

    def __init__(self, in_dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.LayerNorm(in_dim))
        self.decoder = nn.Linear(in_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))
