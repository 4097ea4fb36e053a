"""Text encoders: any BERT-family encoder through `transformers.AutoModel` (the packaged
all-MiniLM-L6-v2 by default), and a small from-scratch BERT for tiny models."""
from __future__ import annotations

from typing import Literal

import torch

from polymodal.pretrained import from_pretrained
from polymodal.models.base import Component, Features, masked_mean
from polymodal.registry import TEXT


class _HFText(Component):
    pool: str

    def export_spec(self) -> dict:
        cfg = self.model.config.to_dict()
        return {"type": "hf_text", "config": cfg, "pool": self.pool}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state  # (B, T, D)
        mask = attention_mask.bool()
        # Mean pooling is what sentence-transformers trained MiniLM with; CLS for BERT-style heads.
        pooled = masked_mean(tokens, mask) if self.pool == "mean" else tokens[:, 0]
        return Features(tokens, mask, pooled, embeddings=self.model.get_input_embeddings()(input_ids))


@TEXT.register("hf_text")
class HFTextEncoder(_HFText):
    """A BERT-family encoder through `AutoModel`.

    Args:
        pretrained: a local HF folder, or "minilm" for the packaged all-MiniLM-L6-v2.
        config: a full HF config dict (what `export_spec` writes), used when `pretrained` is None.
        pool: "mean" (masked mean, sentence-transformers style) or "cls".
    """

    def __init__(self, pretrained: str | None = "minilm", config: dict | None = None,
                 pool: Literal["mean", "cls"] = "mean"):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if config is not None:
            cfg = dict(config)
            model_type = cfg.pop("model_type", "bert")
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg), add_pooling_layer=False)
        elif pretrained:
            self.model = from_pretrained(AutoModel, pretrained, add_pooling_layer=False)
        else:
            raise ValueError("hf_text needs `pretrained` or `config`")
        self.pool = pool
        self.dim = self.model.config.hidden_size


@TEXT.register("bert")
class BertEncoder(_HFText):
    """A from-scratch BERT (`transformers.BertModel`) of any size, for tiny or custom models."""

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 64, num_hidden_layers: int = 2,
                 num_attention_heads: int = 2, intermediate_size: int | None = None,
                 max_position_embeddings: int = 128, pool: Literal["mean", "cls"] = "cls"):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=num_attention_heads,
                         intermediate_size=intermediate_size or 4 * hidden_size,
                         max_position_embeddings=max_position_embeddings)
        self.model = BertModel(cfg, add_pooling_layer=False)
        self.pool = pool
        self.dim = hidden_size
