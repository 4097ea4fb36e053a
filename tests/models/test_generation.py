"""The shared cross-attention beam search gives exactly the tokens of transformers' own."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from polymodal.models.generation import ATTENTION, beam_cache, beam_search_cache, cache_kwarg


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_beam_search_cache_is_exact(attn):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32, add_cross_attention=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     initializer_range=0.5)  # large random weights: outputs depend on the image
    cfg._attn_implementation = attn
    model = GPT2LMHeadModel(cfg).eval()
    memory = torch.randn(5, 7, 32) * 3        # (B, M, D) distinct per image
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[1, 4:] = 0
    start = torch.ones(5, 1, dtype=torch.long)
    kw = dict(input_ids=start, encoder_hidden_states=memory, encoder_attention_mask=mask, max_new_tokens=12,
              num_beams=4, do_sample=False, pad_token_id=0, eos_token_id=2)
    with torch.no_grad():
        ref = model.generate(**kw)
        ours = model.generate(**kw, **{cache_kwarg(): beam_cache(cfg, 4)})
        with beam_search_cache(model, memory, 4) as extra:
            assert model.config._attn_implementation == (ATTENTION if attn == "sdpa" else attn)
            shared = model.generate(**kw, **extra)
    assert model.config._attn_implementation == attn  # restored after the block
    assert torch.equal(ref, ours)
    assert torch.equal(ref, shared)
    assert len({tuple(r) for r in ref.tolist()}) > 1  # not a degenerate all-equal output


def test_no_cache_for_greedy_or_unknown_decoders():
    cfg = GPT2Config(add_cross_attention=True)
    assert beam_cache(cfg, 1) is None and beam_cache(cfg, None) is None
    cfg.model_type = "bert"
    assert beam_cache(cfg, 4) is None
