"""What every explanation is: a relevance score per image token, turned into a map over the image.

An `Explanation` holds the map over the original image (H, W), normalised to [0, 1], the token
grid it came from, what was explained (the text, the model's answer and the explained score)
and, for models that write text, one map per generated token. The methods differ only in how
they score the image tokens; `token_grid` and `to_image_map` are the one place that turns token
scores into pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polymodal.errors import ConfigError

#: method name -> what it computes (the docs and `polymodal explain --help` show these)
METHODS = {
    "grad_attention": "gradient x attention over the image tokens, positive gradients only, mean over "
                      "heads and text tokens (LAVIS's BLIP Grad-CAM); per generated token for decoders",
    "relevance": "relevance propagation through every attention layer (Chefer et al. 2021, "
                 "'Generic Attention-model Explainability for Bi-Modal and Encoder-Decoder Transformers')",
    "attention": "the attention over the image tokens itself, mean over heads, layers and text tokens",
    "grad_x_activation": "gradient x activation on the image tokens, summed over channels, positive part",
    "gradcam": "Grad-CAM on the vision tower's last feature map (Selvaraju et al. 2017): channel weights "
               "= mean gradient, ReLU of the weighted sum",
}


@dataclass
class TokenMap:
    """The map of one generated token (encoder-decoders)."""

    token: str
    map: np.ndarray  # (H, W) in [0, 1]


@dataclass
class Explanation:
    """A heat map of what a model looked at for one image (and text).

    Attributes:
        map: (H, W) float32 in [0, 1], the original image's height and width.
        grid: (h, w) float32 in [0, 1], the token-level relevance the map was upsampled from.
        method: the method's name (`METHODS`).
        text: the question / text explained (None for a caption).
        answer: the model's output: the answer, the caption, "match" / "no match", or None.
        score: the value explained (a logit, a similarity, a sum of log-probabilities).
        tokens: encoder-decoders: one `TokenMap` per generated token, in order.
        image: the image's path, when it was given as one.
    """

    map: np.ndarray
    grid: np.ndarray
    method: str
    text: str | None = None
    answer: str | None = None
    score: float | None = None
    tokens: list[TokenMap] = field(default_factory=list)
    image: str | None = None

    def peak(self) -> tuple[int, int]:
        """(x, y) pixel of the map's maximum: the centre of the grid cell that scores highest.

        A bilinear map's maximum sits on a cell centre; taking it there rather than the first
        pixel of the flat top that edge cells have (align_corners=False) keeps an object at the
        border from being missed by a few pixels."""
        h, w = self.grid.shape
        H, W = self.map.shape
        r, c = np.unravel_index(int(np.argmax(self.grid)), self.grid.shape)
        return min(W - 1, int((c + 0.5) * W / w)), min(H - 1, int((r + 0.5) * H / h))

    def to_dict(self, decimals: int = 3, maps: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; `maps=False` leaves the arrays out."""
        out: dict[str, Any] = {"image": self.image, "method": self.method, "text": self.text,
                               "answer": self.answer, "score": self.score}
        if maps:
            out["map"] = np.round(self.map, decimals).tolist()
            out["grid"] = np.round(self.grid, decimals).tolist()
        if self.tokens:
            out["tokens"] = [{"token": t.token, **({"map": np.round(t.map, decimals).tolist()} if maps else {})}
                             for t in self.tokens]
        return out


def check_method(method: str, offered: tuple[str, ...], what: str) -> str:
    """`method` if this model offers it; a ConfigError listing what it offers otherwise."""
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; one of: {', '.join(METHODS)}")
    if method not in offered:
        raise ConfigError(f"method {method!r} does not apply to {what}; use one of: {', '.join(offered)}")
    return method


def token_grid(n: int, positions: torch.Tensor | None = None) -> tuple[int, int, int]:
    """(h, w, first): which of `n` image tokens form an h x w grid, starting at token `first`.

    A tower that gives `Features.positions` says it; otherwise a square grid, after a leading
    CLS token when n - 1 is a square (ViT, CLIP).
    """
    if positions is not None:
        pos = positions if positions.dim() == 2 else positions[0]
        w, h = len(torch.unique(pos[:, 0])), len(torch.unique(pos[:, 1]))
        if h * w == n:
            return h, w, 0
    for first in (0, 1):
        side = math.isqrt(n - first)
        if side * side == n - first and side > 0:
            return side, side, first
    raise ConfigError(f"the vision tower gives {n} tokens, which form no square grid (with or without a CLS "
                      "token), so they cannot be placed on the image")


def normalise(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float32); a constant map becomes zeros. Non-finite values count as 0."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(x)


def to_image_map(scores: torch.Tensor, grid: tuple[int, int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Token scores (N,) -> (map (H, W), grid (h, w)), both normalised to [0, 1].

    The grid covers the image the model saw; it is stretched bilinearly over the original
    image (for a processor that centre-crops, the map then covers the crop's field of view
    stretched to the whole image).
    """
    h, w, first = grid
    g = scores.detach().float().cpu()[first:first + h * w].reshape(1, 1, h, w)
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    H, W = size
    up = F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return normalise(up.numpy()), normalise(g[0, 0].numpy())


def image_size(image) -> tuple[int, int]:
    """(H, W) of a PIL image."""
    return image.size[1], image.size[0]


def gradient_maps(tokens: torch.Tensor, grads: torch.Tensor, method: str) -> torch.Tensor:
    """Token scores (B, N) from the image tokens (B, N, D) and the gradient of the target.

    grad_x_activation: ReLU(sum_c g * a); gradcam: ReLU(sum_c mean_n(g)_c * a) (Grad-CAM's
    channel weights are the spatially averaged gradients).
    """
    tokens, grads = tokens.detach().float(), grads.detach().float()
    if method == "grad_x_activation":
        return (grads * tokens).sum(-1).clamp_min(0)
    weights = grads.mean(1, keepdim=True)  # (B, 1, D)
    return (weights * tokens).sum(-1).clamp_min(0)


def last_layer_input(module: torch.nn.Module) -> torch.nn.Module | None:
    """The last layer of a Hugging Face transformer encoder inside `module` (ViT, CLIP, SigLIP
    vision towers), or None. Its *input* holds every patch token in a state that still reaches
    the pooled output, unlike the last layer's output, whose patch tokens a CLS pooling ignores."""
    for name, sub in module.named_modules():  # outermost first: the encoder's stack of layers
        if name.split(".")[-1] in ("layer", "layers") and isinstance(sub, torch.nn.ModuleList) and len(sub):
            return sub[-1]
    return None


class Capture:
    """Keeps what a module received (`pre=True`) or returned, for taking gradients later.

    Used as a context manager: `with Capture(layer, pre=True) as cap: ...; cap.tensor`.
    """

    def __init__(self, module: torch.nn.Module, pre: bool = False):
        self.module, self.pre, self.value, self._handle = module, pre, None, None

    def _hook_pre(self, _module, args, kwargs):
        self.value = args[0] if args else kwargs.get("hidden_states")

    def _hook(self, _module, _inputs, output):
        self.value = output

    def __enter__(self) -> "Capture":
        self._handle = (self.module.register_forward_pre_hook(self._hook_pre, with_kwargs=True) if self.pre
                        else self.module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @property
    def tensor(self) -> torch.Tensor:
        v = self.value
        if v is None:
            raise RuntimeError("the captured module did not run")
        if hasattr(v, "tokens"):  # polymodal Features
            return v.tokens
        if isinstance(v, (tuple, list)):
            return v[0]
        return getattr(v, "last_hidden_state", v)
