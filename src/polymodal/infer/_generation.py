"""Exact speed-ups for Hugging Face `generate` on encoder-decoder captioners.

Beam search reorders the KV cache after every step (`cache.reorder_cache(beam_idx)`), the
cross-attention cache included. But every beam of one image attends over the *same* image
tokens, and beams are only ever reordered among the beams of their own image, so the cross-
attention keys/values are identical before and after the reorder: copying them (an
`index_select` over B x beams x image tokens x D, in every layer, at every step) is pure waste.
`SharedCrossCache` reorders the self-attention cache only. Outputs are bit-identical (tested);
on a ViT-small + GPT-2 captioner with 4 beams it removes about a fifth of the time on CPU.
"""
from __future__ import annotations

#: decoders whose cross-attention cache is a plain EncoderDecoderCache (checked in tests)
SUPPORTED_DECODERS = {"gpt2"}


def cache_kwarg() -> str:
    """The name `generate` takes a cache object by: `cache` in transformers 5, `past_key_values` before."""
    import inspect

    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def beam_cache(decoder_config, num_beams: int | None):
    """A cache object to pass to `generate(**{cache_kwarg(): ...})`, or None to let HF make its own."""
    if not num_beams or num_beams <= 1 or getattr(decoder_config, "model_type", None) not in SUPPORTED_DECODERS:
        return None
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    class SharedCrossCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            # Cross-attention K/V are the same for every beam of an image: only self-attention moves.
            self.self_attention_cache.reorder_cache(beam_idx)

    return SharedCrossCache(DynamicCache(config=decoder_config), DynamicCache(config=decoder_config))
