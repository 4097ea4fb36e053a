"""Collators: a list of items (records with decoded images) -> a batch dict of tensors, per task.

Every collator takes a `processor` with
  `process_images(list of PIL images) -> FloatTensor (B, 3, H, W)` and
  `tokenize(list of str, max_length=None) -> {"input_ids": (B, T), "attention_mask": (B, T)}`.
Items that are None (records a RecordDataset dropped) are left out; a batch with nothing left
is None. Random choices (which of five captions) use the item's `_seed`, so batches do not
depend on the number of DataLoader workers.

The batch keys are the trainer's (docs/training.md): `pixel_values`; `input_ids` /
`attention_mask` for the encoder-side text (caption, question, statement, source sentence);
`decoder_input_ids` / `decoder_attention_mask` for a generated target ([CLS] ... [SEP], i.e.
BOS ... EOS; the LM objective shifts them); `labels` (B,) class / answer indices (-100: not in
the vocabulary); `answer_scores` (B, A) VQAv2 soft targets; `image_ids` (B,) int64.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any, Callable, Sequence

import torch

from polymodal.data.vocab import Vocab, normalize_answer
from polymodal.errors import DataError

IGNORE_INDEX = -100


def _rng(item: dict) -> random.Random:
    return random.Random(item.get("_seed", 0))


def _caption_list(item: dict, field: str) -> list[str]:
    """Every caption of an item under `field` ("a+b" joins several lists; a field that is not a list
    gives none)."""
    return [c for f in field.split("+") for c in (item.get(f) if isinstance(item.get(f), list) else [])]


def pick_caption(item: dict, field: str = "captions") -> str:
    """One caption of an item: a seeded choice among `field` (a list), else `caption`.

    `field` may join several lists with "+": "captions+captions_zh" picks among both languages.
    """
    caps = _caption_list(item, field) if "+" in field else item.get(field)
    if isinstance(caps, list) and caps:
        return _rng(item).choice(caps)
    if field == "captions" and isinstance(item.get("caption"), str):
        return item["caption"]
    raise DataError(f"record {item.get('id', '?')} has no {field} (nor caption) to train on")


def majority_answer(answers: Sequence[str]) -> str:
    """The most common answer (the first of the most common on a tie)."""
    counts = Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)


class Collator:
    """Base: drops None items, stacks images, keeps ids. Subclasses add the task's tensors."""

    task = ""
    #: the constructor argument that takes a model's class / answer names as a Vocab (None: none)
    vocab_arg: str | None = None
    #: records of one image (same `image_id`) share one row of `pixel_values`; `image_index` (B,)
    #: maps each record to its row. The model encodes each image once (`image_index` in forward).
    share_images: bool = False

    def __init__(self, processor, max_length: int | None = None):
        self.processor, self.max_length = processor, max_length

    def __call__(self, items: Sequence[dict | None]) -> dict[str, Any] | None:
        items = [x for x in items if x is not None]
        if not items:
            return None
        batch: dict[str, Any] = {"ids": [str(x.get("id", "")) for x in items]}
        images = [x.get("image") for x in items]
        keys = [x.get("image_id") for x in items]
        if self.share_images and all(im is not None for im in images) and all(k is not None for k in keys):
            first: dict = {}                                                 # image_id -> its image
            for k, im in zip(keys, images):
                first.setdefault(k, im)
            rows = {k: r for r, k in enumerate(first)}                       # first-seen order
            batch["pixel_values"] = self.processor.process_images(list(first.values()))  # (Bi, 3, H, W)
            batch["image_index"] = torch.tensor([rows[k] for k in keys], dtype=torch.long)  # (B,)
        elif all(im is not None for im in images):
            batch["pixel_values"] = self.processor.process_images(images)  # (B, 3, H, W)
        elif any(im is not None for im in images):
            raise DataError("a batch mixes records with and without images; give every record an image or none")
        batch.update(self.collate(items))
        return batch

    def collate(self, items: list[dict]) -> dict[str, Any]:
        raise NotImplementedError

    def _tokens(self, texts: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
        enc = self.processor.tokenize(texts, max_length=self.max_length)
        return {f"{prefix}input_ids": enc["input_ids"], f"{prefix}attention_mask": enc["attention_mask"]}

    def _targets(self, texts: list[str], tokenize: Callable | None = None) -> dict[str, torch.Tensor]:
        """Decoder targets: `decoder_input_ids` / `decoder_attention_mask` (B, T), BOS ... EOS."""
        enc = (tokenize or self.processor.tokenize)(texts, max_length=self.max_length)
        return {"decoder_input_ids": enc["input_ids"], "decoder_attention_mask": enc["attention_mask"]}


def image_id_tensor(ids: Sequence[str]) -> torch.Tensor:
    """Stable int64 ids (B,) from string ids: equal strings give equal numbers in every process.

    24-bit hashes, so they stay exact when an objective compares them as float32.
    """
    return torch.tensor([int(hashlib.blake2b(i.encode(), digest_size=4).hexdigest(), 16) & 0xFFFFFF for i in ids],
                        dtype=torch.long)


def _image_size(image) -> tuple[int, int]:
    """(width, height) of a decoded image (PIL, or an H x W (x C) array)."""
    if hasattr(image, "size") and not hasattr(image, "shape"):
        return image.size
    return image.shape[1], image.shape[0]


def _centre(box, size: tuple[int, int], where: str) -> tuple[float, float]:
    """Centre of a pixel box [x0, y0, x1, y1] as fractions of the image's (width, height)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise DataError(f"{where}: a box is [x0, y0, x1, y1] in pixels, got {box!r}")
    (x0, y0, x1, y1), (w, h) = box, size
    return (x0 + x1) / 2 / w, (y0 + y1) / 2 / h


def object_annotations(items: list[dict]) -> dict[str, Any]:
    """Batch keys for object-level supervision, from the records that carry it.

    * `question_objects` (GQA-style: for each object phrase of the question, in the order it is
      named, the boxes of the image objects it refers to) -> `hop_points` (B, K, M, 2) box centres
      as fractions of the image, `hop_points_mask` (B, K, M), `hop_present` (B, K): what the
      `hop_attention` objective needs. A phrase that refers to nothing (an absent object) is a
      present hop with no points.
    * `objects` ([{"box": [...], attribute: value, ...}] for every object of the image) ->
      `objects`: per item, [{"point": (x, y), attribute: value, ...}] for the
      `object_attributes` objective (which maps values to the model's classes).

    Records without these fields give nothing (or empty entries when others in the batch have them).
    """
    out: dict[str, Any] = {}
    sizes = [_image_size(x["image"]) if x.get("image") is not None else None for x in items]
    if any(x.get("question_objects") is not None for x in items):
        hops = [x.get("question_objects") or [] for x in items]
        k = max(len(h) for h in hops)
        m = max([len(p) for h in hops for p in h] + [1])
        points = torch.zeros(len(items), k, m, 2)
        mask = torch.zeros(len(items), k, m, dtype=torch.bool)
        present = torch.zeros(len(items), k, dtype=torch.bool)
        for b, (h, x) in enumerate(zip(hops, items)):
            for j, boxes in enumerate(h):
                present[b, j] = True
                for i, box in enumerate(boxes):
                    points[b, j, i] = torch.tensor(_centre(box, sizes[b], f"record {x.get('id')!r} question_objects"))
                    mask[b, j, i] = True
        out.update(hop_points=points, hop_points_mask=mask, hop_present=present)
    if any(x.get("objects") is not None for x in items):
        out["objects"] = [
            [{**{a: v for a, v in o.items() if a != "box"},
              "point": _centre(o.get("box"), sizes[b], f"record {x.get('id')!r} objects")} for o in x.get("objects") or []]
            for b, x in enumerate(items)]
    return out


class PairCollator(Collator):
    """Image-text pairs for contrastive (ITC) and matching (ITM) pretraining and retrieval.

    Batch: pixel_values (B, 3, H, W), input_ids / attention_mask (B, T) of one caption per image,
    texts, image_ids (records of one image share it: the loss must not treat them as negatives).
    ITM negatives are mined in the batch by the objective, not here.
    """

    task = "pretrain"

    def __init__(self, processor, max_length: int | None = None, field: str = "captions"):
        super().__init__(processor, max_length)
        self.field = field

    def collate(self, items):
        texts = [pick_caption(x, self.field) for x in items]
        return {**self._tokens(texts), "texts": texts,
                "image_ids": image_id_tensor([str(x.get("image_id", x.get("id", ""))) for x in items]),
                **object_annotations(items)}


class CaptionCollator(Collator):
    """Captioning / image-conditioned LM: the caption is both input and target.

    Batch: pixel_values, decoder_input_ids / decoder_attention_mask (B, T) of one caption,
    references (every caption of each image, for metrics).

    Args:
        field: "captions" (English) or "captions_zh".
    """

    task = "caption"

    def __init__(self, processor, max_length: int | None = None, field: str = "captions",
                 captions_per_image: int = 1):
        super().__init__(processor, max_length)
        self.field = field
        self.captions_per_image = captions_per_image

    @property
    def share_images(self) -> bool:
        # several captions of one image: the image is encoded once (`image_index`)
        return self.captions_per_image > 1

    def __call__(self, items):
        """With `captions_per_image` k > 1 each image brings k different captions (a seeded
        choice; all of them when it has fewer), one batch row each, and one row of
        `pixel_values` for all of them (`image_index`), so the vision tower runs once per image."""
        k = self.captions_per_image
        if k == 1:
            return super().__call__(items)
        rows = []
        for i, x in enumerate(items):
            if x is None:
                continue
            caps = _caption_list(x, self.field)
            chosen = _rng(x).sample(caps, min(k, len(caps))) if caps else [pick_caption(x, self.field)]
            key = x.get("image_id", x.get("id", f"item-{i}"))
            rows += [{**x, "image_id": key, "_caption": c} for c in chosen]
        return super().__call__(rows)

    def collate(self, items):
        texts = [x["_caption"] if "_caption" in x else pick_caption(x, self.field) for x in items]
        refs = [list(x.get(self.field) or [x.get("caption", "")]) for x in items]
        return {**self._targets(texts), "references": refs, **object_annotations(items)}


class VqaCollator(Collator):
    """VQA as classification over an answer vocabulary built from the train answers.

    Batch: pixel_values, input_ids / attention_mask of the question, answer_scores (B, A) soft
    scores (VQAv2: min(1, #annotators who gave the answer / 3); a single reference answer scores 1),
    labels (B,) the majority answer's index or -100 when out of vocabulary, answers (lists).

    Args:
        answers: the answer vocabulary (`Vocab.build(train answers, normalize=normalize_answer)`).
        normalize: normalise answers before looking them up (match how the vocabulary was built).
    """

    task = "vqa"
    vocab_arg = "answers"
    share_images = True

    def __init__(self, processor, answers: Vocab, max_length: int | None = None, normalize: bool = True):
        super().__init__(processor, max_length)
        self.answers, self.normalize = answers, normalize

    def collate(self, items):
        questions = [x["question"] for x in items]
        targets = torch.zeros(len(items), len(self.answers))
        answer_ids = torch.full((len(items),), IGNORE_INDEX, dtype=torch.long)
        refs = []
        for b, x in enumerate(items):
            given = [normalize_answer(a) if self.normalize else a for a in x.get("answers") or []]
            refs.append(list(x.get("answers") or []))
            if not given:
                continue
            denom = min(3, len(given))
            for a, k in Counter(given).items():
                i = self.answers.index(a, default=-1)
                if i >= 0:
                    targets[b, i] = min(1.0, k / denom)
            answer_ids[b] = self.answers.index(majority_answer(given), default=IGNORE_INDEX)
        return {**self._tokens(questions), "answer_scores": targets, "labels": answer_ids, "answers": refs,
                "question_types": [x.get("question_type") for x in items], **object_annotations(items)}


class VqaGenerateCollator(Collator):
    """VQA answered generatively: question in, answer tokens out.

    Batch: pixel_values, input_ids / attention_mask of the question, decoder_input_ids /
    decoder_attention_mask (B, Ta) of the majority answer, answers (every reference answer).
    """

    task = "vqa_generate"

    def collate(self, items):
        questions = [x["question"] for x in items]
        refs = [list(x.get("answers") or []) for x in items]
        if not all(refs):
            raise DataError("generative VQA training needs answers for every question")
        return {**self._tokens(questions), **self._targets([majority_answer(r) for r in refs]),
                "answers": refs, "question_types": [x.get("question_type") for x in items]}


class ClassifyCollator(Collator):
    """(Multimodal) classification: image (+ `text`, when the records have one) -> class.

    Batch: pixel_values, input_ids / attention_mask of the text (when there is text),
    labels (B,) class indices.

    Args:
        labels: the class vocabulary (`Vocab.build(train labels, order="sorted")`).
    """

    task = "classify"
    vocab_arg = "labels"

    def __init__(self, processor, labels: Vocab, max_length: int | None = None):
        super().__init__(processor, max_length)
        self.labels = labels

    def collate(self, items):
        out: dict[str, Any] = {"labels": torch.tensor([self.labels.index(x["label"]) for x in items])}
        texts = [x.get("text") for x in items]
        if all(isinstance(t, str) for t in texts):
            out.update(self._tokens(texts))
        elif any(isinstance(t, str) for t in texts):
            raise DataError("a batch mixes records with and without text; classification needs text for all or none")
        return out


class TranslationCollator(Collator):
    """Multimodal translation: image + source sentence -> target sentence.

    Batch: pixel_values (when the records have images), input_ids / attention_mask of the
    source, decoder_input_ids / decoder_attention_mask (B, Tt) of the target, references.

    Args:
        target_tokenize: tokenizer of the target language, same signature as
            processor.tokenize (default: the processor's own; an English WordPiece vocabulary
            maps most Chinese characters to [UNK], so give a Chinese-capable one for zh).
    """

    task = "translate"

    def __init__(self, processor, max_length: int | None = None, target_tokenize: Callable | None = None):
        super().__init__(processor, max_length)
        self.target_tokenize = target_tokenize

    def collate(self, items):
        targets = [x["target"] for x in items]
        return {**self._tokens([x["source"] for x in items]),
                **self._targets(targets, self.target_tokenize), "references": targets}


class GroundingCollator(Collator):
    """Grounding (localise the referred object).

    Batch: pixel_values, input_ids / attention_mask of the referring expression, boxes (B, 4)
    as (x0, y0, x1, y1) fractions of the image's width and height (so they survive resizing),
    image_sizes (B, 2) as (width, height) of the original images.
    """

    task = "ground"

    def collate(self, items):
        sizes = torch.tensor([list(x["image"].size) for x in items], dtype=torch.float32)  # (B, 2) w, h
        boxes = torch.tensor([[float(v) for v in x["box"]] for x in items], dtype=torch.float32)  # (B, 4)
        boxes = (boxes / sizes.repeat(1, 2)).clamp(0.0, 1.0)
        return {**self._tokens([x["ref"] for x in items]), "boxes": boxes, "image_sizes": sizes.long()}


def query_text(item: dict) -> str:
    """The text of a grounding / detection record: its referring expression or its phrase."""
    text = item.get("ref") if item.get("ref") is not None else item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"record {item.get('id', '?')}: no text to look for (a `ref` or a `text`)")
    return text


def target_boxes(item: dict) -> list:
    """The pixel boxes a grounding / detection record names: `[box]` of a referring expression,
    or `boxes` of a phrase (empty: nothing matches)."""
    if item.get("box") is not None:
        return [item["box"]]
    if isinstance(item.get("boxes"), list):
        return item["boxes"]
    raise DataError(f"record {item.get('id', '?')}: no `box` or `boxes` to learn")


class DetectionCollator(Collator):
    """Referring expressions (`ref` + `box`) and text-queried detection (`text` + `boxes`), alike:
    a text and every box it names, possibly none.

    Batch: pixel_values (one row per image, `image_index` (B,) when records share images),
    input_ids / attention_mask of the texts, target_boxes: per record a (T, 4) tensor of
    (x0, y0, x1, y1) fractions of the image's width and height (T = 0: nothing matches), and
    phrase_kinds; `objects` when the records list every object of their image (the
    `object_attributes` objective, see `object_annotations`).
    """

    task = "detect"
    share_images = True

    def collate(self, items):
        targets = []
        for x in items:
            w, h = _image_size(x["image"])
            boxes = torch.tensor([[float(v) for v in b] for b in target_boxes(x)], dtype=torch.float32).view(-1, 4)
            targets.append((boxes / torch.tensor([w, h, w, h], dtype=torch.float32)).clamp(0.0, 1.0))
        return {**self._tokens([query_text(x) for x in items]), "target_boxes": targets,
                "phrase_kinds": [x.get("phrase_kind", "ref" if x.get("ref") is not None else None) for x in items],
                **object_annotations(items)}


#: collator name -> collator class (a task names the one it uses per model family: polymodal.tasks)
COLLATORS: dict[str, type[Collator]] = {
    "pretrain": PairCollator,
    "retrieval": PairCollator,
    "caption": CaptionCollator,
    "vqa": VqaCollator,
    "vqa_generate": VqaGenerateCollator,
    "classify": ClassifyCollator,
    "translate": TranslationCollator,
    "ground": GroundingCollator,
    "detect": DetectionCollator,
}


def make_collator(task: str | type[Collator], processor, labels: Sequence[str] | None = None, **kwargs) -> Collator:
    """The collator named `task` (a key of COLLATORS, or a Collator class of one's own), built
    with the processor and its options.

    Args:
        labels: the model's class / answer names, in its output order (for collators with a
            `vocab_arg`: they become its vocabulary, so target indices match the classifier's rows).
    """
    if isinstance(task, type) and issubclass(task, Collator):
        cls = task
    elif task in COLLATORS:
        cls = COLLATORS[task]
    else:
        raise DataError(f"no collator for task {task!r}; one of {', '.join(COLLATORS)}")
    if labels is not None and cls.vocab_arg:
        kwargs.setdefault(cls.vocab_arg, labels if isinstance(labels, Vocab) else Vocab(labels))
    return cls(processor, **kwargs)


def answer_vocab(records, max_size: int | None = 3129, min_count: int = 1) -> Vocab:
    """The VQA answer vocabulary of (train) records: every reference answer, normalised, most common first."""
    return Vocab.build((r.get("answers") or [] for r in records), max_size=max_size, min_count=min_count,
                       normalize=normalize_answer)


def label_vocab(records) -> Vocab:
    """The class vocabulary of (train) records: every label, sorted."""
    return Vocab.build((r["label"] for r in records if "label" in r), order="sorted")


__all__ = ["Collator", "PairCollator", "CaptionCollator", "VqaCollator", "VqaGenerateCollator", "ClassifyCollator",
           "TranslationCollator", "GroundingCollator", "DetectionCollator", "COLLATORS", "make_collator", "answer_vocab", "label_vocab",
           "pick_caption", "majority_answer", "IGNORE_INDEX"]
