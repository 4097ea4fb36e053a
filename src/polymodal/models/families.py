"""Whole-model families composed from registered parts.

* `dual_encoder`     — two towers into one contrastive space (CLIP / ALIGN style).
* `fusion_encoder`   — towers -> fusion module -> heads (classification / VQA answers, ITM, MLM);
                       also keeps ITC projections of the unimodal features (ALBEF style).
* `encoder_decoder`  — vision (+ text) encoder -> memory tokens -> GPT-2 decoder with
                       cross-attention -> `generate` (captioning, generative VQA, translation).

Models compute; tasks own the losses (polymodal.train.objectives). Each family lists the tasks
it serves (`tasks`); a task says how to build its batches and losses per family (polymodal.tasks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import ConfigError
from polymodal.models.base import Component, Features, build, select
from polymodal.models.heads import ClassifierHead, MLMHead, ProjectionHead, SetPool
from polymodal.registry import DECODERS, FUSIONS, MODELS, TEXT, VISION


def colour_free(attributes) -> list[str]:
    """The attribute names of `attributes` but one named color/colour: those a change of colour
    leaves as they are (read by a colour-blind stream, learnt on a recoloured view)."""
    return [a for a in attributes if a.lower() not in ("color", "colour")]


class _Towers(Component):
    """Shared by every family: the two towers and their export."""

    vision: nn.Module
    text: nn.Module | None

    def _build_towers(self, vision: dict, text: dict | None):
        self.vision = build(VISION, vision, "model.vision")
        self.text = build(TEXT, text, "model.text") if text is not None else None

    def export_spec(self) -> dict:
        spec = dict(self.build_spec)
        for name in ("vision", "text", "fusion", "decoder"):
            part = getattr(self, name, None)
            if isinstance(part, Component):
                spec[name] = part.export_spec()
        return spec

    def encode_image_features(self, pixel_values: torch.Tensor) -> Features:
        return self.vision(pixel_values)

    # ---- object-level supervision of the vision tower, shared by every family
    def _build_object_heads(self, object_attributes: dict[str, list[str]] | None, attribute_tokens: bool):
        self.object_attributes = {k: list(v) for k, v in (object_attributes or {}).items()}
        # a tower with a colour-blind stream: the heads of every attribute but colour read it alone
        cb = getattr(self.vision, "colorblind_dim", 0)
        self.colorblind_heads = colour_free(self.object_attributes) if cb else []
        self.object_heads = nn.ModuleDict({k: nn.Linear(cb if k in self.colorblind_heads else self.vision.dim, 1 + len(v))
                                           for k, v in self.object_attributes.items()}) or None
        if attribute_tokens and not self.object_heads:
            raise ConfigError("model.spec.attribute_tokens needs object_attributes ({attribute: [values]})")
        n_classes = sum(1 + len(v) for v in self.object_attributes.values())
        self.attribute_tokens = nn.Linear(n_classes, self.vision.dim) if attribute_tokens else None

    def object_logits(self, image: Features) -> dict[str, torch.Tensor] | None:
        """What the object heads read on each image token: {attribute: (B, N, 1 + values)}."""
        if not self.object_heads:
            return None
        return {k: h(image.colorblind if k in self.colorblind_heads else image.tokens)
                for k, h in self.object_heads.items()}

    def read_attributes(self, image: Features, object_logits: dict[str, torch.Tensor] | None = None) -> Features:
        """The image features the rest of the model sees. With object heads, what they read on
        each token (their softmax) rides along as `Features.attributes`; with `attribute_tokens`
        it is also added to the tokens (through a linear map), and the pooled feature moves by
        the mean of what was added. Without heads, `image` unchanged."""
        if not self.object_heads:
            return image
        object_logits = object_logits or self.object_logits(image)
        probs = torch.cat([lg.softmax(-1) for lg in object_logits.values()], -1)   # (B, N, classes)
        if self.attribute_tokens is None:
            return replace(image, attributes=probs)
        added = self.attribute_tokens(probs)                                       # (B, N, D)
        keep = image.mask.unsqueeze(-1).to(added.dtype)
        pooled = image.pooled + (added * keep).sum(1) / keep.sum(1).clamp(min=1)
        return replace(image, tokens=image.tokens + added, pooled=pooled, attributes=probs)

    @property
    def attribute_dim(self) -> int:
        """How many numbers `Features.attributes` holds per token (0 without object heads)."""
        return sum(1 + len(v) for v in self.object_attributes.values())

    def encode_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        return self.text(input_ids, attention_mask)


class _ContrastiveSpace:
    """The shared image-text (ITC) space of the dual and fusion encoders: `image_proj` /
    `text_proj` of the towers' pooled features, L2-normalised. With `image_pool: set` the image
    side pools its tokens through `SetPool` (an MLP per token, then the mean) instead."""

    def _build_space(self, embed_dim: int, init_temperature: float, image_pool: str):
        if image_pool not in ("mean", "set"):
            raise ConfigError(f"model.spec.image_pool must be 'mean' (the tower's pooled feature) or 'set' "
                              f"(an MLP per image token, then the mean), got {image_pool!r}")
        self.image_pool = SetPool(self.vision.dim, self.attribute_dim) if image_pool == "set" else None
        self.image_proj = ProjectionHead(self.vision.dim, embed_dim)
        self.text_proj = ProjectionHead(self.text.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def image_embeds(self, image: Features) -> torch.Tensor:
        pooled = self.image_pool(image) if self.image_pool is not None else image.pooled
        return F.normalize(self.image_proj(pooled), dim=-1)

    def text_embeds(self, text: Features) -> torch.Tensor:
        return F.normalize(self.text_proj(text.pooled), dim=-1)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised ITC embeddings (B, E) of the images."""
        return self.image_embeds(self.read_attributes(self.vision(pixel_values)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised ITC embeddings (B, E) of the texts."""
        return self.text_embeds(self.text(input_ids, attention_mask))


# ---------------------------------------------------------------------------- dual encoder
@dataclass
class DualEncoderOutput:
    image_embeds: torch.Tensor  # (B, E), L2-normalised
    text_embeds: torch.Tensor   # (B, E), L2-normalised
    logit_scale: torch.Tensor   # scalar, exp(learned log-scale), clamped at 100
    image_features: Features | None = None                 # the vision tower's output
    object_logits: dict[str, torch.Tensor] | None = None   # with `object_attributes`


@MODELS.register("dual_encoder")
class DualEncoder(_ContrastiveSpace, _Towers):
    """Contrastive image and text towers (Radford et al., 2021, "CLIP").

    Args:
        vision, text: encoder specs (registered `type` + kwargs).
        embed_dim: size of the shared space.
        init_temperature: initial softmax temperature (CLIP: 0.07); learned as log(1/T).
        object_attributes, attribute_tokens: object heads on the image tokens and what they read
            added to the tokens before pooling (as in `fusion_encoder`).
        image_pool: "mean" (a linear map of the tower's pooled feature, CLIP's) or "set" (an MLP
            of each token with its place and the heads' reading, then the mean: `SetPool`).
    """

    #: the built-in tasks (polymodal.tasks) this family serves
    tasks = ("pretrain", "retrieval", "classification")

    def __init__(self, vision: dict, text: dict, embed_dim: int = 256, init_temperature: float = 0.07,
                 object_attributes: dict[str, list[str]] | None = None, attribute_tokens: bool = False,
                 image_pool: str = "mean"):
        super().__init__()
        self._build_towers(vision, text)
        self._build_object_heads(object_attributes, attribute_tokens)
        self._build_space(embed_dim, init_temperature, image_pool)
        self.embed_dim = embed_dim

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> DualEncoderOutput:
        image = self.vision(pixel_values)
        object_logits = self.object_logits(image)
        return DualEncoderOutput(self.image_embeds(self.read_attributes(image, object_logits)),
                                 self.encode_text(input_ids, attention_mask),
                                 self.logit_scale.exp().clamp(max=100.0), image, object_logits)


# -------------------------------------------------------------------------- fusion encoder
@dataclass
class FusionEncoderOutput:
    fused: Features                       # text-aligned fused features
    logits: torch.Tensor | None           # (B, C) over `labels` (classification / VQA answers)
    itm_logits: torch.Tensor | None       # (B, 2): [no match, match]
    mlm_logits: torch.Tensor | None       # (B, T, V), only when asked for
    image_embeds: torch.Tensor | None     # (B, E) normalised unimodal embeddings for ITC
    text_embeds: torch.Tensor | None
    logit_scale: torch.Tensor | None
    # The towers' outputs, so a second pass (ITM negatives, MLM) can re-fuse them without
    # running the towers again: `model(image_features=..., text_features=...)`.
    image_features: Features | None = None
    text_features: Features | None = None
    # per image token, logits over each object attribute's values, class 0 = "no object centred
    # here" ({attribute: (B, N, 1 + values)}), when the model has `object_attributes`
    object_logits: dict[str, torch.Tensor] | None = None


@MODELS.register("fusion_encoder")
class FusionEncoder(_ContrastiveSpace, _Towers):
    """Encoders -> fusion -> heads. The fusion module is swappable by config alone.

    Args:
        vision, text, fusion: part specs; the fusion gets the towers' dims injected.
        labels: the class / answer vocabulary of the classifier head (None: no classifier).
        itm: add an image-text matching head (pretraining with hard negatives).
        mlm_vocab_size: add an MLM head over fused text tokens with this vocabulary (0: none).
        embed_dim: size of the ITC space of the unimodal features (0: no ITC projections).
        classifier_hidden: hidden width of the classifier MLP (default 2 x fusion dim).
        object_attributes: {attribute: [values]} (e.g. {"color": ["red", ...], "shape": [...]}):
            a linear head per attribute on every image token, predicting the attribute of the
            object centred at that token (or none), for the `object_attributes` objective —
            object-level supervision of the vision tower, as detector-pretrained features give.
        attribute_tokens: add what the object heads read on each token (their softmax, through a
            linear map) to the tokens the fusion and the ITC projection see, so a question word
            can look for the attribute it names directly (needs `object_attributes`).
        image_pool: how the ITC space pools the image tokens, "mean" or "set" (as in `dual_encoder`).
    """

    #: the built-in tasks (polymodal.tasks) this family serves
    tasks = ("pretrain", "retrieval", "classification", "vqa")

    def __init__(self, vision: dict, text: dict, fusion: dict, labels: list | None = None, itm: bool = False,
                 mlm_vocab_size: int = 0, embed_dim: int = 0, classifier_hidden: int | None = None,
                 init_temperature: float = 0.07, object_attributes: dict[str, list[str]] | None = None,
                 attribute_tokens: bool = False, image_pool: str = "mean"):
        super().__init__()
        self._build_towers(vision, text)
        self._build_object_heads(object_attributes, attribute_tokens)
        dims = {"image_dim": self.vision.dim, "text_dim": self.text.dim}
        if isinstance(fusion, dict) and FUSIONS.accepts(fusion.get("type"), "attribute_dim"):
            dims["attribute_dim"] = self.attribute_dim  # fusions that read the object heads' output
        self.fusion = build(FUSIONS, fusion, "model.fusion", **dims)
        d = self.fusion.dim
        self.labels = list(labels) if labels else []
        self.classifier = ClassifierHead(d, len(self.labels), classifier_hidden) if self.labels else None
        self.itm_head = nn.Linear(d, 2) if itm else None
        self.mlm_head = MLMHead(d, mlm_vocab_size) if mlm_vocab_size else None
        if embed_dim:
            self._build_space(embed_dim, init_temperature, image_pool)
        else:
            self.image_proj = self.text_proj = self.logit_scale = self.image_pool = None

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_features: Features | None = None,
                text_features: Features | None = None, return_mlm: bool = False,
                image_index: torch.Tensor | None = None) -> FusionEncoderOutput:
        """`image_index` (B,): row of `pixel_values` / `image_features` for each text, when several
        texts share an image (the image tower then runs once per image)."""
        image = image_features if image_features is not None else self.vision(pixel_values)
        if image_index is not None:
            image = select(image, image_index)
        text = text_features if text_features is not None else self.text(input_ids, attention_mask)
        object_logits = self.object_logits(image)
        read = self.read_attributes(image, object_logits)   # what the fusion and the ITC space see
        fused = self.fusion(read, text)
        img_e = txt_e = scale = None
        if self.image_proj is not None:   # as `encode_image` embeds at inference
            img_e, txt_e = self.image_embeds(read), self.text_embeds(text)
            scale = self.logit_scale.exp().clamp(max=100.0)
        return FusionEncoderOutput(
            fused=fused,
            logits=self.classifier(fused.pooled) if self.classifier is not None else None,
            itm_logits=self.itm_head(fused.pooled) if self.itm_head is not None else None,
            mlm_logits=self.mlm_head(fused.tokens) if (return_mlm and self.mlm_head is not None) else None,
            image_embeds=img_e, text_embeds=txt_e, logit_scale=scale, image_features=image, text_features=text,
            object_logits=object_logits)


# ------------------------------------------------------------------------- encoder-decoder
@dataclass
class EncoderDecoderOutput:
    logits: torch.Tensor       # (B, T, V) next-token logits for decoder_input_ids
    memory: torch.Tensor       # (B, M, D_dec)
    memory_mask: torch.Tensor  # (B, M) bool
    image_features: Features | None = None                 # the vision tower's output
    object_logits: dict[str, torch.Tensor] | None = None   # with `object_attributes`


@MODELS.register("encoder_decoder")
class EncoderDecoder(_Towers):
    """Image (+ text) encoder -> memory tokens -> decoder with cross-attention.

    With a `text` tower the memory is `[image tokens; text tokens]` with modality embeddings,
    which serves generative VQA (question in, answer out) and multimodal translation
    (source sentence + its image in, target sentence out).

    Args:
        vision, decoder: part specs; text: optional text tower spec.
        object_attributes, attribute_tokens: object heads on the image tokens (the
            `object_attributes` objective) and what they read added to the tokens the decoder
            attends to (as in `fusion_encoder`).
    """

    #: the built-in tasks (polymodal.tasks) this family serves
    tasks = ("pretrain", "captioning", "vqa", "translation")

    def __init__(self, vision: dict, decoder: dict, text: dict | None = None,
                 object_attributes: dict[str, list[str]] | None = None, attribute_tokens: bool = False):
        super().__init__()
        self._build_towers(vision, text)
        self._build_object_heads(object_attributes, attribute_tokens)
        self.decoder = build(DECODERS, decoder, "model.decoder")
        d = self.decoder.dim
        self.image_to_memory = nn.Sequential(nn.Linear(self.vision.dim, d), nn.LayerNorm(d))
        self.text_to_memory = nn.Sequential(nn.Linear(self.text.dim, d), nn.LayerNorm(d)) if self.text else None
        self.modality = nn.Parameter(torch.zeros(2 if self.text else 1, d))  # learned type embeddings

    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory (B, M, D) and its mask (B, M) for the decoder's cross-attention."""
        return self.memory(self.read_attributes(self.vision(pixel_values)), input_ids, attention_mask)

    def memory(self, image: Features, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory and mask from image features (after `read_attributes`) and the optional text."""
        memory = [self.image_to_memory(image.tokens) + self.modality[0]]
        masks = [image.mask]
        if self.text is not None:
            if input_ids is None:
                raise ValueError("this model conditions on text: pass input_ids and attention_mask")
            text = self.text(input_ids, attention_mask)
            memory.append(self.text_to_memory(text.tokens) + self.modality[1])
            masks.append(text.mask)
        return torch.cat(memory, 1), torch.cat(masks, 1)

    def forward(self, pixel_values: torch.Tensor, decoder_input_ids: torch.Tensor,
                decoder_attention_mask: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None) -> EncoderDecoderOutput:
        """`image_index` (B,): row of `pixel_values` for each target, when several targets share an
        image (`data.captions_per_image`: the image tower then runs once per image)."""
        image = self.vision(pixel_values)
        if image_index is not None:
            image = select(image, image_index)
        object_logits = self.object_logits(image)
        memory, memory_mask = self.memory(self.read_attributes(image, object_logits), input_ids, attention_mask)
        logits = self.decoder(decoder_input_ids, decoder_attention_mask, memory, memory_mask)
        return EncoderDecoderOutput(logits, memory, memory_mask, image, object_logits)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, prompt_ids: torch.Tensor | None = None,
                 **generation) -> torch.Tensor:
        """Generated ids (B, T) including the BOS/prompt; takes HF `generate` arguments."""
        memory, memory_mask = self.encode(pixel_values, input_ids, attention_mask)
        return self.decoder.generate(memory, memory_mask, prompt_ids, **generation)
