"""`LoadedModel` for polymodal's own models (a checkpoint directory or a recipe name)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from polymodal.errors import ConfigError
from polymodal.infer.inputs import as_image_list, check_labels, check_pairs, check_texts, chunks
from polymodal.infer.loaded import (NATIVE_BATCH_SIZE, NATIVE_GENERATION, ZERO_SHOT_TEMPLATE, GenerationOptions,
                                    LoadedModel, quantize_int8)
from polymodal.models.families import EncoderDecoder, FusionEncoder
from polymodal.tasks import get_task, offered_methods


class NativeModel(LoadedModel):
    """A polymodal model + processor with the task methods its model offers (`polymodal.tasks`:
    each task says which models run it and what a checkpoint trained for it is).

    Args:
        model, processor, config: as returned by `load_checkpoint` (config holds `task`).
        device: torch device. batch_size: images per forward pass.
        bf16: run under bf16 autocast (CPU AMX / GPU); off by default so outputs match fp32.
        int8: dynamic int8 quantisation of the Linear layers (CPU only; `quantize_int8`); off by
            default: outputs change.
    """

    def __init__(self, model, processor, config: dict, device: str = "cpu", batch_size: int = NATIVE_BATCH_SIZE,
                 bf16: bool = False, int8: bool = False):
        self.model = model.to(device).eval()
        if int8:
            self.model = quantize_int8(self.model, device)
        self.processor, self.config = processor, config
        self.device, self.batch_size, self.bf16 = torch.device(device), batch_size, bf16
        self.task = config.get("task") or "pretrain"
        self.kind = _kind(self.task)
        self.tasks = offered_methods(self.model, self.task)

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _pixels(self, images) -> torch.Tensor:
        return self.processor.process_images(images).to(self.device)

    def _tokens(self, texts) -> dict:
        return {k: v.to(self.device) for k, v in self.processor.tokenize(texts).items()}

    # ------------------------------------------------------------------ embeddings / retrieval
    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """L2-normalised image embeddings (N, E), a float32 numpy array."""
        if "embed_images" not in self.tasks:
            self._unsupported("embed images")
        out = []
        for chunk in chunks(as_image_list(images), self.batch_size):
            with self._autocast():
                e = self.model.encode_image(self._pixels(chunk))  # dual encoder, or fusion encoder's ITC
            out.append(e.float().cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (N, E), a float32 numpy array."""
        if "embed_texts" not in self.tasks:
            self._unsupported("embed texts")
        out = []
        for chunk in chunks(check_texts(texts), self.batch_size):
            with self._autocast():
                e = self.model.encode_text(**self._tokens(chunk))
            out.append(e.float().cpu())
        return torch.cat(out).numpy()

    def retrieve(self, query, images: Sequence[Any], top_k: int = 5) -> list[dict]:
        """Rank `images` for a text query (str) or an image query; [{index, score}] best first."""
        if "retrieve" not in self.tasks:
            self._unsupported("retrieve images")
        q = self.embed_texts([query]) if isinstance(query, str) else self.embed_images([query])
        scores = (self.embed_images(images) @ q[0]).tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k]
        return [{"index": i, "score": scores[i]} for i in order]

    @torch.no_grad()
    def classify(self, images: Sequence[Any], labels: Sequence[str] | None = None, texts: Sequence[str] | None = None,
                 template: str = ZERO_SHOT_TEMPLATE) -> list[dict]:
        """Zero-shot over `labels` (embedders) or the model's own labels given `texts` (fusion classifier).

        Returns one {"label", "scores": {label: prob}} per image.
        """
        if "classify" not in self.tasks:
            self._unsupported("classify images")
        images, m = as_image_list(images), self.model
        if isinstance(m, FusionEncoder) and m.classifier is not None and texts is not None:
            probs = self._fusion_probs(images, texts)
            names = m.labels
        else:
            names = check_labels(labels or [])
            t = torch.from_numpy(self.embed_texts([template.format(x) for x in names]))  # (L, E)
            scale = float(m.logit_scale.exp().clamp(max=100.0))
            probs = (scale * torch.from_numpy(self.embed_images(images)) @ t.T).softmax(-1)  # (N, L)
        return [{"label": names[int(p.argmax())], "scores": dict(zip(names, map(float, p)))} for p in probs]

    def can_match(self) -> bool:
        """Whether `match` works: the model has an image-text matching (ITM) head."""
        return getattr(self.model, "itm_head", None) is not None

    @torch.no_grad()
    def match(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        """The ITM head's probability that each (image, text) pair matches, (N,) float32."""
        if not self.can_match():
            self._unsupported("match images with texts (it has no image-text matching head)")
        images = as_image_list(images)
        out = [o.itm_logits.float().softmax(-1)[:, 1].cpu() for _, o in self._paired(images, check_texts(texts))]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def _paired(self, images, texts):
        """The model's outputs on (image, text) pairs, a batch at a time: yields (indices, output)."""
        check_pairs(images, texts)
        for idx in chunks(range(len(images)), self.batch_size):
            with self._autocast():
                out = self.model(self._pixels([images[i] for i in idx]), **self._tokens([texts[i] for i in idx]))
            yield idx, out

    def can_score_captions(self) -> bool:
        return isinstance(self.model, EncoderDecoder) and self.model.text is None

    @torch.no_grad()
    def caption_logprob(self, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
        """Mean per-token log-likelihood (N,) of each text given its image under an encoder-decoder
        captioner: teacher forcing on [BOS] w1 ... wn [EOS] (tokenised as in training), the
        log-probability of each of w1 ... [EOS] given the image and the tokens before it, padding
        masked, averaged over the text's tokens. One forward pass per `batch_size` pairs, each image of a
        batch encoded once (pairs of one image side by side share it). The
        "captioner likelihood" filter: a caption that belongs to another image is unlikely."""
        if not self.can_score_captions():
            self._unsupported("score captions by their likelihood (it is not an encoder-decoder captioner)")
        images = as_image_list(images)
        check_pairs(images, texts)
        check_texts(texts, "caption")
        out = []
        for idx in chunks(range(len(images)), self.batch_size):
            enc = self._tokens([texts[i] for i in idx])
            ids, mask = enc["input_ids"], enc["attention_mask"]                          # (B, T)
            # an image given several times in a batch (a path, or the same object) is encoded once
            slot: dict = {}                 # image -> its row among the batch's distinct images
            distinct, image_index = [], []
            for i in idx:
                key = os.fspath(images[i]) if isinstance(images[i], (str, os.PathLike)) else id(images[i])
                if key not in slot:
                    slot[key] = len(distinct)
                    distinct.append(images[i])
                image_index.append(slot[key])
            with self._autocast():
                logits = self.model(self._pixels(distinct), decoder_input_ids=ids, decoder_attention_mask=mask,
                                    image_index=torch.tensor(image_index)).logits        # (B, T, V)
            logp = logits[:, :-1].float().log_softmax(-1)                                # (B, T-1, V)
            tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)                          # (B, T-1)
            keep = mask[:, 1:].float()                                                   # padding: 0
            out.append(((tok * keep).sum(1) / keep.sum(1).clamp(min=1)).cpu())
        return torch.cat(out).numpy()

    def _fusion_probs(self, images, texts) -> torch.Tensor:
        return torch.cat([o.logits.float().softmax(-1).cpu() for _, o in self._paired(images, texts)])

    # ----------------------------------------------------------------------------- generation
    @torch.no_grad()
    def _generate(self, images, texts=None, **generation) -> list[str]:
        options = GenerationOptions.of(generation)
        kwargs = options.generate_kwargs(NATIVE_GENERATION)
        out = []
        with options.seeded():
            for idx in chunks(range(len(images)), self.batch_size):
                with self._autocast():
                    kw = self._tokens([texts[i] for i in idx]) if texts is not None else {}
                    ids = self.model.generate(self._pixels([images[i] for i in idx]), **kw, **kwargs)
                out += self.processor.decode(ids)
        return out

    def caption(self, images: Sequence[Any], **generation) -> list[str]:
        """Captions for `images`; generation: the fields of GenerationOptions (max_new_tokens, num_beams,
        do_sample, temperature, top_p, seed)."""
        if "caption" not in self.tasks:
            self._unsupported("caption images")
        return self._generate(as_image_list(images), **generation)

    @torch.no_grad()
    def answer(self, images: Sequence[Any], questions: Sequence[str], **generation) -> list[str]:
        if "answer" not in self.tasks:
            self._unsupported("answer questions")
        images = as_image_list(images)
        check_pairs(images, questions, "question")
        check_texts(questions, "question")
        if isinstance(self.model, FusionEncoder):
            probs = self._fusion_probs(images, list(questions))
            return [self.model.labels[int(i)] for i in probs.argmax(-1)]
        return self._generate(images, list(questions), **generation)

    def translate(self, images: Sequence[Any], texts: Sequence[str], **generation) -> list[str]:
        if "translate" not in self.tasks:
            self._unsupported("translate")
        images = as_image_list(images)
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} sentences; give one sentence per image")
        check_texts(texts, "sentence")
        return self._generate(images, list(texts), **generation)

    # ------------------------------------------------------------------ grounding / detection
    @torch.no_grad()
    def token_boxes(self, images: Sequence[Any], texts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per (image, text) pair of a text detector: every image token's match probability (N,)
        and box (N, 4) as (x0, y0, x1, y1) pixels of that image, best-scoring first."""
        from polymodal.infer.inputs import read_image
        from polymodal.models.boxes import to_pixels

        images = [read_image(im, i) for i, im in enumerate(as_image_list(images))]
        out = []
        for idx, o in self._paired(images, check_texts(texts)):
            probs, boxes = o.logits.float().sigmoid().cpu(), o.boxes.float().cpu()  # (b, N), (b, N, 4)
            for j, i in enumerate(idx):
                order = probs[j].argsort(descending=True)
                w, h = images[i].size
                out.append((probs[j, order], to_pixels(boxes[j, order], w, h)))
        return out

    def ground(self, images: Sequence[Any], texts: Sequence[str]) -> list[dict]:
        """The object each text names (a referring expression): one {"box": [x0, y0, x1, y1]
        pixels, "score": confidence} per (image, text) pair."""
        if "ground" not in self.tasks:
            self._unsupported("ground referring expressions")
        return [{"box": _rounded(boxes[0]), "score": float(probs[0])} for probs, boxes in self.token_boxes(images, texts)]

    def detect(self, images: Sequence[Any], texts: Sequence[str], threshold: float = 0.5) -> list[list[dict]]:
        """Every object each text names: per (image, text) pair the [{"box", "score"}] scoring at
        least `threshold`, best first; an empty list when nothing matches."""
        if "detect" not in self.tasks:
            self._unsupported("detect what a text names")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ConfigError(f"threshold {threshold!r}: give a probability between 0 and 1")
        return [[{"box": _rounded(b), "score": float(p)} for p, b in zip(probs, boxes) if p >= threshold]
                for probs, boxes in self.token_boxes(images, texts)]


def _rounded(box) -> list[float]:
    return [round(float(v), 2) for v in box]


def _kind(task: str) -> str:
    """What a checkpoint trained for `task` is, in words ("captioner")."""
    from polymodal.errors import ConfigError

    try:
        return get_task(task).kind
    except ConfigError:  # a checkpoint of a task registered elsewhere
        return "model"


def load_native(path: Path, device: str = "cpu", **kwargs) -> NativeModel:
    from polymodal.checkpoint import load_checkpoint

    model, processor, config = load_checkpoint(path, device=device)
    return NativeModel(model, processor, config, device=device, **kwargs)


def load_recipe(name: str, device: str = "cpu", **kwargs) -> NativeModel:
    """A freshly built (untrained unless its towers are pretrained) model from a recipe."""
    from polymodal.models.recipes import create_model, get_recipe
    from polymodal.processing import Processor

    recipe = get_recipe(name)
    model = create_model(name)
    processor = Processor.from_spec(recipe.get("processor") or {}, f"{recipe['source']}: processor")
    return NativeModel(model, processor, {"task": recipe.get("task"), "recipe": name}, device=device, **kwargs)
