"""Fast beam search: exact speed-ups for Hugging Face beam search on decoders with cross-attention
(GPT-2), used by polymodal's own decoder (`models/decoder.py`) and by Hugging Face
VisionEncoderDecoder checkpoints (`infer/hf.py`). It lives with the models so that both import
it downward.

Every beam of one image attends over the *same* image tokens, yet transformers' beam search
treats the beams as independent sequences:

1. it computes the cross-attention keys/values from the encoder states copied once per beam
   (`num_beams` times the work), and stores them per beam;
2. it reorders the whole KV cache after every step (`cache.reorder_cache(beam_idx)`), the
   cross-attention part included, although beams only move among the beams of their own image,
   so those keys/values are the same before and after;
3. each beam's one query reads its own copy of those keys/values (`num_beams` times the memory
   traffic, in every layer at every step).

`beam_search_cache` removes all three: the cross-attention K/V are computed once per image before
`generate` and stored once per image (`prefill_cross_attention`); `SharedCrossCache` reorders the
self-attention cache only; and an attention function registered with transformers'
`AttentionInterface` lets the `num_beams` queries of an image attend over its single copy (the
stock SDPA call everywhere else). Outputs equal transformers' own beam search (tested, and
reported next to the speed by `benchmarks/caption_throughput.py`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

#: decoders whose cross-attention cache is a plain EncoderDecoderCache (checked in tests)
SUPPORTED_DECODERS = {"gpt2"}
#: the name our attention function is registered under (masks: the SDPA ones)
ATTENTION = "polymodal_beam_sdpa"


def cache_kwarg() -> str:
    """The name `generate` takes a cache object by: `cache` in transformers 5, `past_key_values` before."""
    import inspect

    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def applies(decoder_config, num_beams: int | None) -> bool:
    """Whether beam search with this decoder has image K/V to share."""
    return bool(num_beams) and num_beams > 1 and getattr(decoder_config, "model_type", None) in SUPPORTED_DECODERS


def beam_cache(decoder_config, num_beams: int | None):
    """A cache object to pass to `generate(**{cache_kwarg(): ...})`, or None to let HF make its own."""
    if not applies(decoder_config, num_beams):
        return None
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    class SharedCrossCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            # Cross-attention K/V are the same for every beam of an image: only self-attention moves.
            self.self_attention_cache.reorder_cache(beam_idx)

    return SharedCrossCache(DynamicCache(config=decoder_config), DynamicCache(config=decoder_config))


def _beam_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA, except when the keys hold one copy per image and the queries one row per beam.

    query (B * beams, H, Q, d) against key/value (B, H, T, d): the beams of image b become
    `beams * Q` query rows over image b's single K/V, then are split back into beams.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.shape[0] == query.shape[0]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    b, (bq, h, q, d) = key.shape[0], query.shape
    beams = bq // b
    query = query.view(b, beams, h, q, d).transpose(1, 2).reshape(b, h, beams * q, d)
    if attention_mask is not None:  # a padding mask over image tokens: one row serves every query
        attention_mask = attention_mask[::beams, :, :1]
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)  # (B, beams*Q, H, d)
    return out.view(b, beams, q, h, d).reshape(bq, q, h, d), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _beam_sdpa)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def prefill_cross_attention(cache, decoder, memory) -> None:
    """Store each GPT-2 layer's cross-attention K/V of `memory` (B, T, D) once per image in `cache`."""
    for i, block in enumerate(decoder.transformer.h):
        attn = block.crossattention
        key, value = attn.c_attn(memory).split(attn.split_size, dim=2)
        shape = (*key.shape[:-1], -1, attn.head_dim)
        cache.cross_attention_cache.update(key.view(shape).transpose(1, 2), value.view(shape).transpose(1, 2), i)
        cache.is_updated[i] = True


@contextlib.contextmanager
def beam_search_cache(decoder, memory, num_beams: int | None) -> Iterator[dict]:
    """Extra `generate` kwargs for beam search over `memory` (B, T, D) with a GPT-2 `decoder`.

    Yields {} when there is nothing to share (greedy, another decoder); a SharedCrossCache alone
    when the decoder does not use SDPA; otherwise a cache prefilled with the per-image cross K/V,
    with the decoder switched to the beam-sharing attention for the duration of the block.
    """
    cfg = decoder.config
    cache = beam_cache(cfg, num_beams)
    if cache is None:
        yield {}
        return
    kwargs = {cache_kwarg(): cache}
    if cfg._attn_implementation != "sdpa" or getattr(cfg, "reorder_and_upcast_attn", False):
        yield kwargs
        return
    _register()
    prefill_cross_attention(cache, decoder, memory)
    cfg._attn_implementation = ATTENTION
    try:
        yield kwargs
    finally:
        cfg._attn_implementation = "sdpa"
