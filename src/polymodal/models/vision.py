"""Vision encoders: Hugging Face ViT / CLIP vision towers (wrapped, not re-implemented) and a
small convolutional stem for tiny test models. EfficientNet-Lite0 lives in efficientnet.py."""
from __future__ import annotations

import torch
from torch import nn

from polymodal.pretrained import from_pretrained
from polymodal.models.base import Component, Features
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


@VISION.register("conv_stem")
class ConvStemEncoder(Component):
    """A small conv net for tiny models: `depth` stride-2 conv blocks, then the grid as tokens.

    Args:
        dim: output channels (= token dim D).
        depth: number of stride-2 blocks; a 64 px image gives (64 / 2**depth)**2 tokens.
        width: channels of the first block (doubling up to `dim`).
    """

    def __init__(self, dim: int = 64, depth: int = 3, width: int = 16):
        super().__init__()
        layers, c_in = [], 3
        for i in range(depth):
            c_out = dim if i == depth - 1 else min(dim, width * 2 ** i)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # depthwise conv as position encoding
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, pixel_values: torch.Tensor) -> Features:
        x = self.body(pixel_values)                      # (B, D, h, w)
        x = x + self.pos(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, h*w, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, tokens.mean(1))
