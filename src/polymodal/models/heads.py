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


class SetPool(nn.Module):
    """Deep Sets pooling (Zaheer et al., 2017) of image tokens for the contrastive space: the
    tower's pooled feature plus the mean over real tokens of an MLP of each token, its (x, y) place
    and what the object heads read on it.

    The default pooling (a linear map of the tokens' mean) can only add what each token holds;
    an MLP per token first can bind what sits at one place ("red" and "circle" on the same
    token), so the mean becomes a bag of objects rather than a bag of colours and a bag of shapes.
    The MLP's last layer starts at zero, so the pool starts as the tower's own pooled feature
    (a random MLP's mean over many tokens is nearly the same for every image, and learning from
    there was slow: docs/results.md). (B, N, D) tokens -> (B, D).
    """

    def __init__(self, dim: int, attribute_dim: int = 0, hidden: int | None = None):
        super().__init__()
        hidden = hidden or 2 * dim
        self.attribute_dim = attribute_dim
        self.net = nn.Sequential(nn.Linear(dim + 2 + attribute_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, image) -> torch.Tensor:
        x = image.tokens
        b, n, _ = x.shape
        pos = image.positions if image.positions is not None else x.new_full((n, 2), 0.5)
        parts = [x, (pos if pos.dim() == 3 else pos.expand(b, n, 2)).to(x.dtype)]
        if self.attribute_dim:
            if image.attributes is None:
                raise ValueError("SetPool was built to read the object heads' attributes, but the image "
                                 "features carry none")
            parts.append(image.attributes.to(x.dtype))
        keep = image.mask.unsqueeze(-1).to(x.dtype)
        return image.pooled + (self.net(torch.cat(parts, -1)) * keep).sum(1) / keep.sum(1).clamp(min=1)


class MLMHead(nn.Module):
    """Masked-token prediction on fused text tokens: (B, T, D) -> (B, T, V)."""

    def __init__(self, in_dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.LayerNorm(in_dim))
        self.decoder = nn.Linear(in_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))
