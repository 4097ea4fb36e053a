"""Pre-processing: the one place that knows normalisation statistics and tokenisation.

`Processor` turns user inputs (paths, PIL images, arrays, strings) into batches:
`process_images(images) -> (B, 3, S, S)` float tensor and `tokenize(texts) -> {input_ids,
attention_mask}`. It is saved with the model (`export_spec()` in config.json, tokenizer files
beside it) and rebuilt from there.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from polymodal.data.images import load_image
from polymodal.errors import CheckpointError
from polymodal.pretrained import PACKAGED, resolve_pretrained
from polymodal.registry import check_kwargs

log = logging.getLogger(__name__)

#: ImageNet statistics (most HF vision towers) and CLIP's, for reference in recipes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A space with a CJK character (or CJK punctuation) on either side: WordPiece decoding adds it.
_CJK_SPACE = re.compile(r"(?<=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]) (?=[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef])")

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def to_pixel_values(arrays: Sequence[np.ndarray], table: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """Uint8 images (each (H, W, 3), one size) -> pixel values (B, 3, H, W) float32.

    A uint8 pixel has 256 values, so rescaling and normalising is a per-channel lookup `table`
    (3, 256): one gather per channel. Every batched image processor of polymodal (its own, and
    the mirror of Hugging Face processors in `polymodal.infer.hf_images`) ends here; they differ
    in how they resize and in the arithmetic that fills the table.

    Args:
        channels_last: keep the images' (H, W, 3) memory order under the (B, 3, H, W) view, as
            polymodal's own towers always received it (the convolution kernels, and so the last
            bits of their outputs, depend on the memory format); else contiguous channels-first.
    """
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes after resizing ({sorted(shapes)}); "
                         "this processor needs a fixed output size")
    x = np.stack(arrays)  # (B, H, W, 3) uint8
    if channels_last:
        out = np.empty(x.shape, dtype=np.float32)  # (B, H, W, 3)
        for c in range(3):
            np.take(table[c], x[..., c], out=out[..., c])
        return torch.from_numpy(out).permute(0, 3, 1, 2)  # (B, 3, H, W), channels-last memory
    out = np.empty((x.shape[0], 3) + x.shape[1:3], dtype=np.float32)  # (B, 3, H, W)
    for c in range(3):
        np.take(table[c], x[..., c], out=out[:, c])
    return torch.from_numpy(out)


class ImageProcessor:
    """Resize (+ optional centre crop) with PIL, then normalise a whole batch at once.

    Args:
        image_size: output side S.
        mean, std: per-channel statistics the vision tower was trained with.
        resize: "squash" (resize to S x S), or "crop" (shorter side to S, centre crop S x S).
        resample: PIL filter name.
    """

    def __init__(self, image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, resize: Literal["squash", "crop"] = "squash",
                 resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"):
        self.image_size, self.resize, self.resample = image_size, resize, resample
        self.mean, self.std = list(mean), list(std)
        # Fold /255 and normalisation into one affine map x * scale + shift per channel, in
        # float32, and tabulate it for the 256 pixel values: (3, 256).
        m, s = torch.tensor(self.mean), torch.tensor(self.std)
        scale, shift = (1.0 / (255.0 * s)).view(3, 1), (-m / s).view(3, 1)
        self.table = (torch.arange(256, dtype=torch.float32).view(1, 256) * scale + shift).numpy()

    def export_spec(self) -> dict:
        return {"image_size": self.image_size, "mean": self.mean, "std": self.std,
                "resize": self.resize, "resample": self.resample}

    def resize_one(self, image: Any) -> np.ndarray:
        """One image (any accepted input) -> uint8 array (S, S, 3)."""
        img = load_image(image)
        s, f = self.image_size, _RESAMPLE[self.resample]
        if self.resize == "crop":
            scale = s / min(img.size)
            w, h = max(s, round(img.width * scale)), max(s, round(img.height * scale))
            img = img.resize((w, h), f, reducing_gap=3.0)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
        elif img.size != (s, s):
            img = img.resize((s, s), f, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        """Images (paths, PIL images, arrays, bytes) -> pixel values (B, 3, S, S) float32."""
        return to_pixel_values([self.resize_one(im) for im in images], self.table, channels_last=True)


class Processor:
    """Image processor + tokenizer of one model.

    Args:
        image: ImageProcessor keyword arguments.
        tokenizer: a local tokenizer folder, or "minilm" for the packaged all-MiniLM-L6-v2 one.
        max_length: default truncation length of `tokenize`.
    """

    def __init__(self, image: dict | None = None, tokenizer: str = "minilm", max_length: int = 32):
        image = image or {}
        check_kwargs(ImageProcessor, image, "processor.image")
        self.image = ImageProcessor(**image)
        self.tokenizer_source, self.max_length = tokenizer, max_length
        self.tokenizer = _load_tokenizer(tokenizer)
        self._cut_noted = False

    @classmethod
    def from_spec(cls, spec: dict, where: str = "processor", base_dir: Path | None = None) -> "Processor":
        """Build from a config block; a relative tokenizer path resolves against `base_dir`."""
        spec = dict(spec)
        check_kwargs(cls, spec, where)
        tok = spec.get("tokenizer", "minilm")
        if base_dir is not None and tok == ".":
            spec["tokenizer"] = str(base_dir)
        return cls(**spec)

    def export_spec(self, tokenizer: str | None = None) -> dict:
        return {"image": self.image.export_spec(), "tokenizer": tokenizer or self.tokenizer_source,
                "max_length": self.max_length}

    def save(self, directory: Path) -> dict:
        """Write the tokenizer files into `directory`; return the spec that reloads them from there."""
        self.tokenizer.save_pretrained(str(directory))
        return self.export_spec(tokenizer=".")

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def process_images(self, images: Sequence[Any]) -> torch.Tensor:
        return self.image(images)

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        texts, limit = list(texts), max_length or self.max_length
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        if not self._cut_noted:
            self._note_cut(texts, enc["attention_mask"].sum(1), limit)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _note_cut(self, texts: list[str], lengths: torch.Tensor, limit: int) -> None:
        """Warn (once per processor) when texts are longer than `limit` tokens: they are cut, and
        a caption cut short teaches a decoder to stop mid-sentence. Only the texts that reach the
        limit are tokenized again, in full."""
        at_limit = [texts[i] for i in (lengths >= limit).nonzero().flatten().tolist()]
        if not at_limit:
            return
        full = [len(ids) for ids in self.tokenizer(at_limit, truncation=False)["input_ids"]]
        cut = [n for n in full if n > limit]
        if cut:
            self._cut_noted = True
            log.warning("%d of %d texts in a batch are longer than max_length=%d tokens (up to %d) and are cut; "
                        "raise processor.max_length if they should be whole (warned once)",
                        len(cut), len(texts), limit, max(cut))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids (B, T) -> texts; no spaces are put between Chinese characters."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [_CJK_SPACE.sub("", t).strip() for t in texts]


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer

    path = resolve_pretrained(source) if source in PACKAGED else Path(source)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load a tokenizer ({exc}); give a folder with tokenizer files "
                              "or 'minilm'") from exc


def train_tokenizer(texts: Sequence[str], out_dir: str | Path, vocab_size: int = 2000,
                    lowercase: bool = True) -> Path:
    """Train a small BERT-style WordPiece tokenizer on `texts` and save it (AutoTokenizer loads it).

    A vocabulary fitted to the data makes small generators much faster (the LM head's softmax
    is over `vocab_size`, not 30k) and covers every character of Chinese captions, which the
    English MiniLM vocabulary mostly maps to [UNK]. Special tokens are BERT's:
    [PAD]=0, [UNK]=1, [CLS]=2 (BOS), [SEP]=3 (EOS), [MASK]=4.

    Args:
        texts: the training texts (captions, questions, answers, targets).
        out_dir: where to write tokenizer.json and its config.
        vocab_size: upper bound of the vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # BertNormalizer puts spaces around CJK characters, so each Chinese character is a token.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1,
                                        show_progress=False)
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=lowercase, unk_token="[UNK]", sep_token="[SEP]",
                             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
