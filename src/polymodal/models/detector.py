"""A text-queried detector: every image token reads the text, scores itself as a match and
proposes a box around its place. Serves referring-expression grounding (the best-scoring box)
and text-queried detection (every box scoring above a threshold; none is a valid answer).

In the manner of OWL-ViT (Minderer et al., 2022: a box and a text-match score per image token)
with MDETR's early fusion (Kamath et al., 2021: image tokens conditioned on the text before the
boxes are read), trained with DETR's set matching (Carion et al., 2020; the `set_matching`
objective in polymodal.train.objectives). Boxes are predicted relative to each token's place
(`Features.positions`: a conv-grid vision tower such as `conv_stem`), so a token only has to say
how far the object's centre lies from its own and how large the object is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from polymodal.errors import ConfigError
from polymodal.models.base import Features, select
from polymodal.models.boxes import cxcywh_to_xyxy
from polymodal.models.families import _Towers
from polymodal.registry import MODELS


@dataclass
class DetectorOutput:
    logits: torch.Tensor                  # (B, N) text-match logit of each image token
    boxes: torch.Tensor                   # (B, N, 4) each token's box (x0, y0, x1, y1), fractions of the image
    image_features: Features | None = None
    text_features: Features | None = None
    # per image token, logits over each object attribute's values, class 0 = "no object centred
    # here" ({attribute: (B, N, 1 + values)}), when the model has `object_attributes`
    object_logits: dict[str, torch.Tensor] | None = None


@MODELS.register("text_detector")
class TextDetector(_Towers):
    """Image + text -> a match logit and a box per image token.

    Args:
        vision, text: tower specs; the vision tower must give token places (`Features.positions`).
        dim: width of the joint layers.
        layers: joint layers; each lets the image tokens attend to each other (to compare
            places and sizes: "the leftmost", "the small") and to the text tokens (what is asked).
        heads: attention heads.
        ffn: hidden width of the joint layers' feed-forward blocks (default 2 x dim). The joint
            layers run once per (image, text) pair, so their width is most of a step's cost.
        reach: how far (in grid cells) a token's box centre may lie from the token's own centre.
        prior: the initial match probability of a token (focal-loss initialisation, RetinaNet).
        object_attributes: {attribute: [values]}: a linear head per attribute on every image token,
            naming the object centred there (or none), for the `object_attributes` objective, as
            in FusionEncoder: object-level supervision of the vision tower.
        attribute_tokens: add what those heads read (their softmax, through a linear map) to the
            image tokens before the joint layers, so a word can look for the attribute it names.
    """

    #: the built-in tasks (polymodal.tasks) this family serves
    tasks = ("grounding", "detection")

    def __init__(self, vision: dict, text: dict, dim: int = 128, layers: int = 2, heads: int = 4,
                 ffn: int | None = None, reach: float = 1.5, prior: float = 0.01,
                 object_attributes: dict[str, list[str]] | None = None, attribute_tokens: bool = False):
        super().__init__()
        self._build_towers(vision, text)
        if self.text is None:
            raise ConfigError("text_detector needs a text tower (model.text)")
        self.image_in = nn.Sequential(nn.Linear(self.vision.dim, dim), nn.LayerNorm(dim))
        self.text_in = nn.Sequential(nn.Linear(self.text.dim, dim), nn.LayerNorm(dim))
        # A DETR decoder layer whose queries are the image tokens: self-attention among them,
        # cross-attention to the text tokens, a feed-forward block.
        self.layers = nn.ModuleList(nn.TransformerDecoderLayer(dim, heads, ffn or 2 * dim, dropout=0.0, activation="gelu",
                                                               batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.match = nn.Linear(dim, 1)
        nn.init.constant_(self.match.bias, -math.log((1 - prior) / prior))
        self.box = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4))
        self.dim, self.reach = dim, reach
        self._build_object_heads(object_attributes, attribute_tokens)

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_features: Features | None = None,
                text_features: Features | None = None, image_index: torch.Tensor | None = None) -> DetectorOutput:
        """`image_index` (B,): row of `pixel_values` for each text, when several texts share an
        image (the image tower then runs once per image)."""
        image = image_features if image_features is not None else self.vision(pixel_values)
        if image_index is not None:
            image = select(image, image_index)
        text = text_features if text_features is not None else self.text(input_ids, attention_mask)
        if image.positions is None:
            raise ConfigError("text_detector needs a vision tower whose tokens have places (Features.positions: "
                              "conv_stem or efficientnet_lite0), not one with a CLS token")
        object_logits = self.object_logits(image)
        x = self.image_in(self.read_attributes(image, object_logits).tokens)   # (B, N, D)
        t = self.text_in(text.tokens)                                      # (B, T, D)
        for layer in self.layers:
            x = layer(x, t, memory_key_padding_mask=~text.mask)
        x = self.norm(x)
        logits = self.match(x).squeeze(-1)                                 # (B, N)
        raw = self.box(x)                                                  # (B, N, 4)
        pos = image.positions.to(x.dtype)                                  # (N, 2) or (B, N, 2)
        cell = 1.0 / math.sqrt(x.shape[1])                                 # a grid cell, as a fraction
        centre = pos + torch.tanh(raw[..., :2]) * self.reach * cell        # (B, N, 2)
        size = torch.sigmoid(raw[..., 2:])                                 # (B, N, 2) width, height
        boxes = cxcywh_to_xyxy(torch.cat([centre, size], -1))
        return DetectorOutput(logits, boxes, image, text, object_logits)
