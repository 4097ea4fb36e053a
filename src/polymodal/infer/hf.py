"""Run Hugging Face vision-language checkpoints from a local directory, offline.

`load_hf(path)` reads `config.json`, picks the wrapper from an explicit table keyed by the
`architectures` field (`model_type` only where it names one architecture), and loads model,
image processor and tokenizer with `local_files_only=True` — nothing is downloaded.

Supported (see `SUPPORTED`):

    VisionEncoderDecoderModel     captioner   .caption, .explain  (e.g. ViT-GPT-2)
    BlipForConditionalGeneration  captioner   .caption          (optionally after a text prompt)
    BlipForQuestionAnswering      VQA         .answer
    CLIPModel, SiglipModel        embedder    .embed_images / .embed_texts / .classify / .retrieve / .explain

The wrappers call the Hugging Face model exactly as its own documentation does: pixel values
come from the checkpoint's own image processor (`AutoImageProcessor`), and `.caption(imgs,
max_length=16, num_beams=4)` runs `model.generate(pixel_values, max_length=16, num_beams=4)`,
so the tokens are identical. Generation options left at None are not passed, so the
checkpoint's `generation_config.json` decides them, as it would for `generate`.

Embeddings are returned as float32 numpy arrays (N, D), L2-normalised: they go straight into
JSON, numpy search or faiss without a device or autograd in tow.

Images are read with `polymodal.data.images.load_image` in batches of `batch_size`; an
unreadable image raises `DataError` naming the item (its position is in `err.index`).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from polymodal.errors import CheckpointError, ConfigError, DataError
from polymodal.infer.inputs import IMAGE_SUFFIXES, as_image_list, batches, check_labels, check_texts, read_image
from polymodal.infer.loaded import HF_BATCH_SIZE, ZERO_SHOT_TEMPLATE, GenerationOptions, LoadedModel, quantize_int8

log = logging.getLogger(__name__)

#: Images per forward pass unless a call or `load_hf(batch_size=...)` says otherwise.
DEFAULT_BATCH_SIZE = HF_BATCH_SIZE


def load_hf(path, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
            bf16: bool = False, fast_preprocess: bool = False, int8: bool = False) -> "HFModel":
    """Load a Hugging Face model directory (`save_pretrained` layout) as a LoadedModel.

    Args:
        path: directory with config.json, weights, preprocessor_config.json and tokenizer files.
        device: "cpu", "cuda", "cuda:1"...; None picks CUDA when available, else CPU.
        batch_size: images (or texts) per forward pass.
        bf16: run forward passes under bfloat16 autocast (faster on CPUs with bf16 units and on
            GPUs; results then differ slightly from float32).
        fast_preprocess: replace the checkpoint's image processor by a batched tensor version
            with the same resize filter and arithmetic (`polymodal.infer.hf_images`); used only where it
            understands every setting of the processor.
        int8: dynamic int8 quantisation of the model's `nn.Linear` layers (CPU only;
            `polymodal.infer.loaded.quantize_int8`); outputs change.
    """
    import torch

    path = Path(path)
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no config.json; a Hugging Face model directory needs one") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from exc
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    wrapper, arch = _pick_wrapper(cfg, cfg_file)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _from_pretrained(wrapper.hf_class, path)
    model.to(device).eval().requires_grad_(False)
    if int8:
        model = quantize_int8(model, device)
    image_processor, tokenizer = _load_processors(path)
    log.info("loaded %s from %s as %s on %s", arch, path, wrapper.__name__, device)
    fast = None
    if fast_preprocess:
        from polymodal.infer.hf_images import TensorImageProcessor

        fast = TensorImageProcessor.from_hf(image_processor)
    return wrapper(model=model, image_processor=image_processor, tokenizer=tokenizer, path=path,
                   device=device, batch_size=batch_size, bf16=bf16, fast_images=fast)


# --------------------------------------------------------------------------------------------
# Common plumbing


class HFModel(LoadedModel):
    """A Hugging Face model with its image processor and tokenizer, run in batches."""

    #: the transformers class that loads the weights (a name, resolved lazily)
    hf_class: str = ""

    def __init__(self, model, image_processor, tokenizer, path: Path, device, batch_size: int,
                 bf16: bool, fast_images=None):
        self.model = model
        self.fast_images = fast_images  # a TensorImageProcessor, or None: the HF processor
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, device={self.device}, bf16={self.bf16})"

    # -- images -----------------------------------------------------------------------------
    def pixel_values(self, images: Sequence[Any], offset: int = 0):
        """Decode `images` and run the checkpoint's image processor: (B, 3, H, W) on the device.

        Args:
            images: paths, bytes, PIL images or arrays.
            offset: position of images[0] in the caller's list, for error messages.
        """
        return self._process([read_image(img, offset + i) for i, img in enumerate(as_image_list(images))])

    def _process(self, pils: list):
        if self.fast_images is not None:
            return self.fast_images(pils).to(self.device)
        return self.image_processor(images=pils, return_tensors="pt")["pixel_values"].to(self.device)

    def _batches(self, n: int, batch_size: int | None) -> Iterator[slice]:
        return batches(n, self.batch_size if batch_size is None else batch_size)

    @contextlib.contextmanager
    def _inference(self):
        """No autograd; bf16 autocast only when the model was loaded with bf16=True."""
        import torch

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.bf16):
            yield

    def _decode(self, ids) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


# --------------------------------------------------------------------------------------------
# Generation


class _Generator(HFModel):
    """Shared `caption` loop: decode a batch of images, call `_generate`, decode tokens."""

    def _generate(self, pixel_values, **gen):
        raise NotImplementedError

    def caption(self, images: Sequence[Any], max_length: int | None = None,
                max_new_tokens: int | None = None, num_beams: int | None = None,
                do_sample: bool | None = None, temperature: float | None = None,
                top_p: float | None = None, seed: int | None = None,
                batch_size: int | None = None) -> list[str]:
        """Caption each image.

        Args:
            images: a list of paths, bytes, PIL images or arrays (or one of them).
            max_length, max_new_tokens, num_beams, do_sample, temperature, top_p: passed to
                `generate` when set; None leaves the checkpoint's generation config in charge.
            seed: seeds sampling (once per call) without touching the global RNG.
            batch_size: images per `generate` call; default: the one given to `load`.
        """
        gen = GenerationOptions(max_new_tokens=max_new_tokens, max_length=max_length, num_beams=num_beams,
                                do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        return self._caption(as_image_list(images), gen, batch_size)

    def _caption(self, images: list, gen: GenerationOptions, batch_size: int | None, **extra) -> list[str]:
        out: list[str] = []
        with gen.seeded(), self._inference():
            for sl in self._batches(len(images), batch_size):
                pixel_values = self.pixel_values(images[sl], offset=sl.start)  # (B, 3, H, W)
                out += self._decode(self._generate(pixel_values, **extra, **gen.generate_kwargs()))
        return out


# --------------------------------------------------------------------------------------------
# Captioners


class HFVisionEncoderDecoder(_Generator):
    """`VisionEncoderDecoderModel` (ViT-GPT-2 and kin): image -> caption."""

    hf_class = "VisionEncoderDecoderModel"
    kind = "captioner"
    tasks = ("caption", "explain")

    def _generate(self, pixel_values, **gen):
        # The exact call of the model card, model.generate(pixel_values, max_length=16, num_beams=4),
        # with the image encoded once and its cross-attention K/V shared by the beams of each image
        # (polymodal/models/generation.py): same tokens, less work.
        from transformers.modeling_outputs import BaseModelOutput

        from polymodal.models.generation import applies, beam_search_cache

        beams = gen.get("num_beams") or self.model.generation_config.num_beams
        if applies(self.model.decoder.config, beams):
            encoder_states = self.model.encoder(pixel_values=pixel_values).last_hidden_state
            memory = encoder_states
            if hasattr(self.model, "enc_to_dec_proj"):
                memory = self.model.enc_to_dec_proj(encoder_states)
            with beam_search_cache(self.model.decoder, memory, beams) as extra:
                return self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
                                           **extra, **gen)
        return self.model.generate(pixel_values, **gen)


class HFBlipCaptioner(_Generator):
    """`BlipForConditionalGeneration`: image (+ optional text prompt) -> caption."""

    hf_class = "BlipForConditionalGeneration"
    kind = "captioner"
    tasks = ("caption",)

    def caption(self, images: Sequence[Any], prompt: str | None = None,
                max_length: int | None = None, max_new_tokens: int | None = None,
                num_beams: int | None = None, do_sample: bool | None = None,
                temperature: float | None = None, top_p: float | None = None,
                seed: int | None = None, batch_size: int | None = None) -> list[str]:
        """Caption each image; with `prompt` ("a picture of"), the caption continues that text.

        The returned caption starts with the prompt, as BLIP's own decoding gives it. The other
        arguments are those of `HFVisionEncoderDecoder.caption`.
        """
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise DataError(f"prompt must be a non-empty string, got {prompt!r}")
        gen = GenerationOptions(max_new_tokens=max_new_tokens, max_length=max_length, num_beams=num_beams,
                                do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        return self._caption(as_image_list(images), gen, batch_size, prompt=prompt)

    def _generate(self, pixel_values, prompt: str | None = None, **gen):
        if prompt is None:
            return self.model.generate(pixel_values=pixel_values, **gen)
        # One prompt for the whole batch: every row has the same length, so no padding can
        # leak into the decoder. (B, T) ids; BLIP swaps [CLS] for its [DEC] bos and drops [SEP].
        enc = self.tokenizer([prompt] * pixel_values.shape[0], return_tensors="pt")
        return self.model.generate(pixel_values=pixel_values, input_ids=enc["input_ids"].to(self.device),
                                   attention_mask=enc["attention_mask"].to(self.device), **gen)


class HFBlipVQA(HFModel):
    """`BlipForQuestionAnswering`: image + question -> short answer."""

    hf_class = "BlipForQuestionAnswering"
    kind = "visual question answering model"
    tasks = ("answer",)

    def answer(self, images: Sequence[Any], questions: Sequence[str] | str,
               max_length: int | None = None, max_new_tokens: int | None = None,
               num_beams: int | None = None, do_sample: bool | None = None,
               temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None, batch_size: int | None = None) -> list[str]:
        """Answer questions[i] about images[i] (one question string is asked of every image).

        Args:
            images: a list of paths, bytes, PIL images or arrays (or one of them).
            questions: one string per image, or one string for all.
            max_length ... seed, batch_size: as for `caption`.
        """
        images = as_image_list(images)
        questions = check_texts(questions, "question")
        if len(questions) == 1 and len(images) > 1:
            questions = questions * len(images)
        if len(questions) != len(images):
            raise DataError(f"got {len(images)} images and {len(questions)} questions; "
                            "give one question per image, or one for all")
        gen = GenerationOptions(max_new_tokens=max_new_tokens, max_length=max_length, num_beams=num_beams,
                                do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        # BLIP's decoder attends to every question position, padding included, so a padded
        # batch would answer differently from the same question asked alone. Batch only
        # questions of equal token length: answers never depend on their neighbours.
        ids = self.tokenizer(questions)["input_ids"]
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(ids):
            groups.setdefault(len(row), []).append(i)
        answers: list[str] = [""] * len(images)
        with gen.seeded(), self._inference():
            for members in groups.values():
                for sl in self._batches(len(members), batch_size):
                    idx = members[sl]
                    pixel_values = self._process([read_image(images[i], i) for i in idx])  # (B, 3, H, W)
                    enc = self.tokenizer([questions[i] for i in idx], return_tensors="pt")
                    tokens = self.model.generate(input_ids=enc["input_ids"].to(self.device),
                                                 pixel_values=pixel_values,
                                                 attention_mask=enc["attention_mask"].to(self.device),
                                                 **gen.generate_kwargs())
                    for i, text in zip(idx, self._decode(tokens)):
                        answers[i] = text
        return answers


# --------------------------------------------------------------------------------------------
# Dual encoders


_TEXT_INPUTS = ("input_ids", "attention_mask")


class HFClip(HFModel):
    """`CLIPModel`: normalised image / text embeddings; zero-shot classification by softmax."""

    hf_class = "CLIPModel"
    kind = "CLIP image-text encoder"
    tasks = ("classify", "embed_images", "embed_texts", "retrieve", "explain")

    def _tokenize(self, texts: list[str]):
        # CLIP pads to the longest text; truncate to what the position table holds.
        return self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                              max_length=self.model.config.text_config.max_position_embeddings)

    def _dim(self) -> int:
        return self.model.config.projection_dim

    def _probs(self, cos):
        """(N, L) cosine similarities -> label probabilities: softmax over logit_scale * cos."""
        return (cos * self.model.logit_scale.exp().float()).softmax(dim=-1)

    # -- embeddings -------------------------------------------------------------------------
    def _image_embeddings(self, images: list, batch_size: int | None):
        import torch

        chunks = []
        with self._inference():
            for sl in self._batches(len(images), batch_size):
                feats = self.model.get_image_features(pixel_values=self.pixel_values(images[sl], sl.start))
                chunks.append(_normalised(feats))
        return torch.cat(chunks) if chunks else torch.zeros(0, self._dim())

    def _text_embeddings(self, texts: list[str], batch_size: int | None):
        import torch

        chunks = []
        with self._inference():
            for sl in self._batches(len(texts), batch_size):
                enc = self._tokenize(texts[sl])
                # only what the text tower takes (a BERT-style tokenizer adds token_type_ids)
                enc = {k: v.to(self.device) for k, v in enc.items() if k in _TEXT_INPUTS
                       and k in self.tokenizer.model_input_names}
                chunks.append(_normalised(self.model.get_text_features(**enc)))
        return torch.cat(chunks) if chunks else torch.zeros(0, self._dim())

    def embed_images(self, images: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """L2-normalised image embeddings, float32 numpy (N, D)."""
        return self._image_embeddings(as_image_list(images), batch_size).cpu().numpy()

    def embed_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """L2-normalised text embeddings, float32 numpy (N, D)."""
        return self._text_embeddings(check_texts(texts), batch_size).cpu().numpy()

    # -- tasks ------------------------------------------------------------------------------
    def classify(self, images: Sequence[Any], labels: Sequence[str],
                 template: str = ZERO_SHOT_TEMPLATE, batch_size: int | None = None) -> list[dict]:
        """Zero-shot classification: each label is put in `template` and compared to the image.

        Args:
            images: a list of paths, bytes, PIL images or arrays (or one of them).
            labels: the candidate class names (distinct).
            template: a text with one `{}` that the label fills.

        Returns:
            per image {"label": best label, "scores": {label: probability}}; CLIP's
            probabilities sum to 1 over the labels, SigLIP's are independent sigmoids.
        """
        labels = check_labels(labels)
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ConfigError(f"template must contain '{{}}' once, where the label goes; got {template!r}")
        text = self._text_embeddings([template.format(lab) for lab in labels], batch_size)  # (L, D)
        image = self._image_embeddings(as_image_list(images), batch_size)  # (N, D)
        probs = self._probs(image.float() @ text.float().T).cpu()  # (N, L)
        out = []
        for row in probs.tolist():
            best = max(range(len(labels)), key=row.__getitem__)
            out.append({"label": labels[best], "scores": dict(zip(labels, row))})
        return out

    def retrieve(self, query, images: Sequence[Any], top_k: int = 5,
                 batch_size: int | None = None) -> list[dict]:
        """Rank `images` by cosine similarity to `query`.

        Args:
            query: a text (str), or an image (a PIL image, array, bytes or os.PathLike; a str
                naming an existing file is read as an image too).
            images: the images to search.
            top_k: how many to return (at most len(images)).

        Returns:
            [{"index": position in `images`, "score": cosine similarity}], best first.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        images = as_image_list(images)
        if isinstance(query, str) and not Path(query).is_file():
            if Path(query).suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"query {query!r}: no such image file; check the path "
                                "(a text query must not look like an image file name)")
            q = self._text_embeddings([query], batch_size)
        else:
            try:
                q = self._image_embeddings([query], batch_size)
            except DataError as exc:
                raise DataError(f"query: {exc.__cause__ or exc}") from exc
        scores = (self._image_embeddings(images, batch_size).float() @ q.float()[0]).cpu()  # (N,)
        k = min(top_k, len(images))
        top = scores.topk(k) if k else None
        return [] if top is None else [{"index": int(i), "score": float(s)}
                                       for s, i in zip(top.values, top.indices)]


class HFSiglip(HFClip):
    """`SiglipModel`: as CLIP, but each label's probability is its own sigmoid (with logit_bias)."""

    hf_class = "SiglipModel"
    kind = "SigLIP image-text encoder"

    def _tokenize(self, texts: list[str]):
        # SigLIP was trained on texts padded to the full length (64) and pools the last
        # position, so pad to max_length as Hugging Face's own pipeline does.
        return self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                              max_length=self.model.config.text_config.max_position_embeddings)

    def _dim(self) -> int:
        return self.model.config.vision_config.hidden_size  # SigLIP has no projection layer

    def _probs(self, cos):
        """(N, L) cosine similarities -> sigmoid(logit_scale.exp() * cos + logit_bias)."""
        scale = self.model.logit_scale.exp().float()
        return (cos * scale + self.model.logit_bias.float()).sigmoid()


def _normalised(feats):
    """(B, D) features, L2-normalised in float32. transformers 5 returns an output object."""
    if not hasattr(feats, "norm"):
        feats = feats.pooler_output
    feats = feats.float()
    return feats / feats.norm(p=2, dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------
# Dispatch: one explicit table, keyed by config.json's "architectures"

#: architecture name -> wrapper class
SUPPORTED: dict[str, type[HFModel]] = {
    "VisionEncoderDecoderModel": HFVisionEncoderDecoder,
    "BlipForConditionalGeneration": HFBlipCaptioner,
    "BlipForQuestionAnswering": HFBlipVQA,
    "CLIPModel": HFClip,
    "SiglipModel": HFSiglip,
}

#: model_type -> architecture, for configs without "architectures" (only unambiguous types:
#: "blip" is captioner or VQA and needs the architectures field).
_BY_MODEL_TYPE = {
    "vision-encoder-decoder": "VisionEncoderDecoderModel",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
}


def _pick_wrapper(cfg: dict, cfg_file: Path) -> tuple[type[HFModel], str]:
    archs = cfg.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if not archs and cfg.get("model_type") in _BY_MODEL_TYPE:
        archs = [_BY_MODEL_TYPE[cfg["model_type"]]]
    for arch in archs:
        if arch in SUPPORTED:
            return SUPPORTED[arch], arch
    found = (f"architecture {', '.join(map(str, archs))}" if archs
             else f"no 'architectures' field (model_type {cfg.get('model_type')!r})")
    raise CheckpointError(f"{cfg_file}: {found} is not supported. polymodal runs these Hugging Face "
                          f"architectures: {', '.join(SUPPORTED)}. (Polymodal's own checkpoints carry "
                          "'polymodal_version' in config.json.)")


def _from_pretrained(class_name: str, path: Path):
    import transformers

    cls = getattr(transformers, class_name)
    try:
        return cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the {class_name} weights ({exc})") from exc


def _load_processors(path: Path):
    """The checkpoint's own image processor and tokenizer, from files in `path` only."""
    from transformers import AutoImageProcessor, AutoTokenizer

    def _one(what: str, needs: str, fn: Callable):
        try:
            return fn(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: cannot load the {what} ({exc}); the directory needs "
                                  f"{needs}, as written by save_pretrained") from exc

    if not (path / "preprocessor_config.json").is_file():
        raise CheckpointError(f"{path}: no preprocessor_config.json; save the image processor "
                              "with `processor.save_pretrained(dir)` next to the weights")
    image_processor = _one("image processor", "preprocessor_config.json", AutoImageProcessor.from_pretrained)
    tokenizer = _one("tokenizer", "tokenizer files (tokenizer.json or vocab files)",
                     AutoTokenizer.from_pretrained)
    return image_processor, tokenizer
