"""Vision encoders: Hugging Face ViT / CLIP vision towers (wrapped, not re-implemented) and a
small convolutional stem for tiny test models. EfficientNet-Lite0 lives in efficientnet.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.pretrained import from_pretrained
from polymodal.models.base import Component, Features, grid_positions
from polymodal.registry import VISION


class _HFVision(Component):
    """Wraps an HF vision model whose output has `last_hidden_state` (B, N, D)."""

    def export_spec(self) -> dict:
        # Rebuild from the architecture config alone; the weights come from the checkpoint.
        return {"type": self.build_spec["type"], "config": self.model.config.to_dict()}

    def forward(self, pixel_values: torch.Tensor) -> Features:
        out = self.model(pixel_values=pixel_values)
        tokens = out.last_hidden_state  # (B, 1 + N_patches, D), CLS first
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else tokens[:, 0]
        return Features(tokens, mask, pooled)


@VISION.register("vit")
class ViTEncoder(_HFVision):
    """A ViT (Dosovitskiy et al., 2021) through `transformers.ViTModel`.

    Args:
        pretrained: a local HF ViT folder; if None, built from `config` / the size arguments.
        config: a full `ViTConfig` dict (what `export_spec` writes).
        image_size, patch_size, hidden_size, num_hidden_layers, num_attention_heads,
        intermediate_size: the size of a from-scratch ViT.
    """

    def __init__(self, pretrained: str | None = None, config: dict | None = None, image_size: int = 224,
                 patch_size: int = 16, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, intermediate_size: int | None = None):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        if pretrained:
            self.model = from_pretrained(ViTModel, pretrained, add_pooling_layer=False)
        else:
            cfg = ViTConfig(**config) if config else ViTConfig(
                image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                intermediate_size=intermediate_size or 4 * hidden_size)
            self.model = ViTModel(cfg, add_pooling_layer=False)
        self.dim = self.model.config.hidden_size


@VISION.register("clip_vision")
class CLIPVisionEncoder(_HFVision):
    """The vision tower of a local CLIP folder (`CLIPVisionModel`); pooled = post-LN CLS."""

    def __init__(self, pretrained: str | None = None, config: dict | None = None):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if pretrained:
            self.model = from_pretrained(CLIPVisionModel, pretrained)
        elif config:
            self.model = CLIPVisionModel(CLIPVisionConfig(**config))
        else:
            raise ValueError("clip_vision needs `pretrained` (a local CLIP folder) or `config`")
        self.dim = self.model.config.hidden_size


def _with_coords(x: torch.Tensor) -> torch.Tensor:
    """CoordConv (Liu et al., 2018): append the x and y coordinate maps (-1..1) as channels."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], 1)


class _GroupMax(torch.autograd.Function):
    """(B, G*K, h, w) -> (B, K, h, w): the largest of the G groups' values, elementwise.

    `amax` forward (10x faster than `max` with indices here) and a backward that passes the
    gradient to the winning group (each of them on an exact tie, which real images almost never
    give): 1.5-2x faster fwd+bwd than `max(...).values` or `amax`'s own backward (tie-splitting)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, groups: int) -> torch.Tensor:
        x = x.unflatten(1, (groups, -1))
        out = x.amax(1)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out = ctx.saved_tensors
        return ((x == out.unsqueeze(1)) * grad.unsqueeze(1)).flatten(1, 2), None


def _conv_stack(c_in: int, dim: int, depth: int, width: int, refine: int, extra: int) -> nn.ModuleList:
    """`depth` stride-2 conv blocks from `c_in` channels (`width`, doubling up to `dim`), then
    `refine` stride-1 blocks; each block Conv -> BatchNorm -> GELU, its input `extra` channels wider
    (the coordinate maps)."""
    blocks = nn.ModuleList()
    for i in range(depth):
        c_out = dim if i == depth - 1 else min(dim, width * 2 ** i)
        blocks.append(nn.Sequential(nn.Conv2d(c_in + extra, c_out, 3, stride=2, padding=1),
                                    nn.BatchNorm2d(c_out), nn.GELU()))
        c_in = c_out
    for _ in range(refine):
        blocks.append(nn.Sequential(nn.Conv2d(dim + extra, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.GELU()))
    return blocks


@VISION.register("conv_stem")
class ConvStemEncoder(Component):
    """A small conv net for tiny models: `depth` stride-2 conv blocks, then the grid as tokens.

    Convolutions are translation-equivariant, so without `coords` a token knows *what* is around
    it but not *where* it is, and "left of" / "above" can only be read from border effects. With
    `coords` every conv block also sees the coordinate maps (CoordConv, Liu et al. 2018; the
    coordinate maps of FiLM and Relation Networks) and the tokens get a position embedding of
    their (x, y) centre, so absolute position is in the features. Measured on the shapes world
    (docs/results.md): position-aware tokens are what lets a VQA model place the objects a
    question names.

    Args:
        dim: output channels (= token dim D).
        depth: number of stride-2 blocks; a 64 px image gives (64 / 2**depth)**2 tokens.
        width: channels of the first block (doubling up to `dim`).
        coords: CoordConv inputs and (x, y) position embeddings (and `Features.positions`).
        refine: stride-1 3x3 conv blocks after the last stride-2 block (a wider receptive field
            per token at the token resolution).
        colorblind: channels of a second, colour-blind stream (0: none). Its first convolution
            sees each colour channel alone, with the same weights, and keeps the strongest
            response of the three; the rest is a stack like the main one (`refine` included), to
            the same grid, and a depthwise conv over neighbouring tokens as `pos` is. It
            is added to the tokens (through a linear map) and kept as `Features.colorblind`,
            which the object heads of every attribute but colour read: a shape is then read from
            what it looks like in any one channel, so a colour-shape pair never seen in training
            is read as the pairs that were (docs/results.md, "The compositional split").
    """

    def __init__(self, dim: int = 64, depth: int = 3, width: int = 16, coords: bool = False, refine: int = 0,
                 colorblind: int = 0):
        super().__init__()
        if isinstance(colorblind, bool) or not isinstance(colorblind, int) or colorblind < 0:
            raise ValueError(f"conv_stem colorblind: expected a number of channels (0 for none), got {colorblind!r}")
        extra = 2 if coords else 0
        self.blocks = _conv_stack(3, dim, depth, width, refine, extra)
        self.coords = coords
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # depthwise conv as position encoding
        # (x, y) -> D: sin/cos features of the absolute position, so it works at any grid size
        self.pos_abs = nn.Linear(4 * 8, dim) if coords else None
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        self.colorblind_dim = colorblind
        if colorblind:
            self.cb_blocks = _conv_stack(1, colorblind, depth, width, refine, extra)
            self.cb_pos = nn.Conv2d(colorblind, colorblind, 3, padding=1, groups=colorblind)  # as self.pos
            self.cb_norm = nn.LayerNorm(colorblind)
            self.cb_proj = nn.Linear(colorblind, dim)

    def _abs_embedding(self, pos: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(8, device=pos.device, dtype=pos.dtype) * math.pi  # (8,)
        ang = pos.unsqueeze(-1) * freqs                                                # (N, 2, 8)
        return self.pos_abs(torch.cat([ang.sin(), ang.cos()], -1).flatten(1))          # (N, D)

    def forward(self, pixel_values: torch.Tensor) -> Features:
        x = pixel_values
        for block in self.blocks:
            x = block(_with_coords(x) if self.coords else x)
        x = x + self.pos(x)                                # (B, D, h, w)
        h, w = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)              # (B, h*w, D)
        positions = grid_positions(h, w, tokens.device)    # (h*w, 2)
        if self.coords:
            tokens = tokens + self._abs_embedding(positions.to(tokens.dtype))
        cb = None
        if self.colorblind_dim:
            cb = self.cb_norm(self._colorblind(pixel_values).flatten(2).transpose(1, 2))   # (B, h*w, K)
            tokens = tokens + self.cb_proj(cb)
        tokens = self.norm(tokens)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, tokens.mean(1), positions, colorblind=cb)

    def _colorblind(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The colour-blind stream: (B, C, H, W) -> (B, K, h, w). The first convolution runs on
        each channel alone (same weights) and keeps the strongest response of the C."""
        first, *rest = self.cb_blocks
        conv, norm_act = first[0], first[1:]
        c = pixel_values.shape[1]
        x = (torch.cat([_with_coords(ch) for ch in pixel_values.split(1, dim=1)], 1) if self.coords
             else pixel_values)
        # one grouped convolution, the same weights in each channel's group, then the strongest
        # response per output channel (1.6x faster fwd+bwd than a channel at a time stacked with
        # amax, 3x faster than B*C one-channel images)
        x = F.conv2d(x, conv.weight.repeat(c, 1, 1, 1), conv.bias.repeat(c), conv.stride, conv.padding, groups=c)
        x = norm_act(_GroupMax.apply(x, c))
        for block in rest:
            x = block(_with_coords(x) if self.coords else x)
        return x + self.cb_pos(x)
