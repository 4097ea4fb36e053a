"""GPT-style decoders with cross-attention over image (and text) memory tokens."""
from __future__ import annotations

import torch

from polymodal.pretrained import from_pretrained
from polymodal.models.base import Component
from polymodal.registry import DECODERS


@DECODERS.register("gpt2")
class GPT2Decoder(Component):
    """`transformers.GPT2LMHeadModel` with `add_cross_attention=True` (Radford et al., 2019).

    Args:
        pretrained: a local GPT-2 folder (cross-attention layers are added, freshly initialised).
        config: a full `GPT2Config` dict (what `export_spec` writes).
        vocab_size, n_embd, n_layer, n_head, n_positions: the size of a from-scratch decoder.
        bos_token_id, eos_token_id, pad_token_id: special ids of the tokenizer in use
            (for a BERT tokenizer: [CLS]=101, [SEP]=102, [PAD]=0).
    """

    def __init__(self, pretrained: str | None = None, config: dict | None = None, vocab_size: int = 30522,
                 n_embd: int = 256, n_layer: int = 4, n_head: int = 4, n_positions: int = 64,
                 bos_token_id: int = 101, eos_token_id: int = 102, pad_token_id: int = 0):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        if pretrained:
            self.model = from_pretrained(GPT2LMHeadModel, pretrained, add_cross_attention=True)
        else:
            cfg = GPT2Config(**config) if config else GPT2Config(
                vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                add_cross_attention=True, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id)
            self.model = GPT2LMHeadModel(cfg)
        self.dim = self.model.config.n_embd

    def export_spec(self) -> dict:
        return {"type": "gpt2", "config": self.model.config.to_dict()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for `input_ids` (B, T) attending over `memory` (B, M, D)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         encoder_hidden_states=memory, encoder_attention_mask=memory_mask.long(),
                         use_cache=False)
        return out.logits

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, memory_mask: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                 **generation) -> torch.Tensor:
        """Token ids (B, T) continuing `prompt_ids` (default: BOS), with the KV cache.

        `generation` takes `transformers.GenerationMixin.generate` arguments: max_new_tokens,
        num_beams, do_sample, temperature, top_p, ...
        """
        cfg = self.model.config
        if prompt_ids is None:
            prompt_ids = torch.full((memory.shape[0], 1), cfg.bos_token_id, dtype=torch.long, device=memory.device)
        generation.setdefault("pad_token_id", cfg.pad_token_id)
        generation.setdefault("eos_token_id", cfg.eos_token_id)
        from polymodal.models.generation import beam_search_cache

        with beam_search_cache(self.model, memory, generation.get("num_beams")) as extra:
            return self.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                       encoder_hidden_states=memory, encoder_attention_mask=memory_mask.long(),
                                       **extra, **generation)
