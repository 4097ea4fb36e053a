"""Every registered fusion meets the one fusion contract (parametrised over FUSIONS.names(),
so a new fusion is tested the moment it is registered), plus a few module-specific checks."""
from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.models import fusion as fusion_mod  # noqa: F401  (registers the fusions)
from polymodal.models.base import Features, build, masked_mean
from polymodal.registry import FUSIONS

IMAGE_DIM, TEXT_DIM, DIM = 48, 40, 32  # deliberately all different
B, N, T = 3, 5, 7
IMAGE_LEN = [5, 3, 5]  # real image tokens per sample (variable-size images get padded too)
TEXT_LEN = [7, 4, 1]   # real text tokens per sample

# Every registered fusion with its defaults, plus the variants whose code paths differ.
CASES = [(name, {}) for name in FUSIONS.names()] + [
    ("attention", {"co_attention": True, "layers": 2}),
    ("cross_transformer", {"pool": "mean"}),
    ("projection", {"activation": "gelu", "norm": False}),
    ("hop_attention", {"compare": True}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]


def make(name: str, **kwargs):
    torch.manual_seed(0)
    return FUSIONS.build({"type": name, "dim": DIM, **kwargs}, "model.fusion",
                         image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()


def lengths_to_mask(lengths, size):
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]  # (B, size) bool


def inputs(seed: int = 1) -> tuple[Features, Features]:
    g = torch.Generator().manual_seed(seed)
    image = Features(tokens=torch.randn(B, N, IMAGE_DIM, generator=g),
                     mask=lengths_to_mask(IMAGE_LEN, N),
                     pooled=torch.randn(B, IMAGE_DIM, generator=g))
    text = Features(tokens=torch.randn(B, T, TEXT_DIM, generator=g),
                    mask=lengths_to_mask(TEXT_LEN, T),
                    pooled=torch.randn(B, TEXT_DIM, generator=g))
    return image, text


def with_padding(f: Features, fill: str) -> Features:
    """The same features with every padded position overwritten."""
    pad = ~f.mask.unsqueeze(-1)
    junk = torch.full_like(f.tokens, float("nan")) if fill == "nan" else 1e3 * torch.randn_like(f.tokens)
    return Features(tokens=torch.where(pad, junk, f.tokens), mask=f.mask.clone(), pooled=f.pooled)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_output_shapes_and_text_alignment(name, kwargs):
    m = make(name, **kwargs)
    assert m.dim == DIM
    image, text = inputs()
    out = m(image, text)
    assert out.tokens.shape == (B, T, DIM)
    assert out.pooled.shape == (B, DIM)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, text.mask)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    # Padded text positions come out as zeros; real ones carry signal.
    assert (out.tokens[~text.mask] == 0).all()
    assert out.tokens[text.mask].abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("fill", ["noise", "nan"])
@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_padding_never_influences_real_outputs(name, kwargs, fill):
    m = make(name, **kwargs)
    image, text = inputs()
    ref = m(image, text)
    out = m(with_padding(image, fill), with_padding(text, fill))
    torch.testing.assert_close(out.tokens[text.mask], ref.tokens[text.mask], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_padding_acts_as_if_absent(name, kwargs):
    # Zeroing padding alone would make outputs independent of padded *values*; padded keys must
    # also take no attention weight. So: each sample run alone, cut to its real tokens, gives
    # the same result as inside the padded batch.
    m = make(name, **kwargs)
    image, text = inputs()
    out = m(image, text)
    for b, (n, t) in enumerate(zip(IMAGE_LEN, TEXT_LEN)):
        img = Features(image.tokens[b:b + 1, :n], image.mask[b:b + 1, :n], image.pooled[b:b + 1])
        txt = Features(text.tokens[b:b + 1, :t], text.mask[b:b + 1, :t], text.pooled[b:b + 1])
        alone = m(img, txt)
        torch.testing.assert_close(alone.tokens[0], out.tokens[b, :t], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.pooled[0], out.pooled[b], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_output_depends_on_both_modalities(name, kwargs):
    m = make(name, **kwargs)
    image, text = inputs(1)
    other_image, other_text = inputs(2)
    ref = m(image, text)
    for img, txt in ((other_image, text), (image, other_text)):
        out = m(img, txt)
        # Every sample's real tokens and pooled vector change when either modality changes.
        tok_delta = (out.tokens - ref.tokens).abs().sum(-1)  # (B, T)
        assert (tok_delta[text.mask & txt.mask] > 1e-4).all()
        assert ((out.pooled - ref.pooled).abs().sum(-1) > 1e-4).all()


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_every_parameter_gets_a_gradient(name, kwargs):
    m = make(name, **kwargs).train()
    image, text = inputs()
    out = m(image, text)
    # Random weights, not a plain sum: the sum (or sum of squares) of a LayerNorm output is
    # constant and would give zero gradients upstream of it.
    g = torch.Generator().manual_seed(3)
    loss = (out.tokens * torch.randn(out.tokens.shape, generator=g)).sum() \
        + (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum()
    loss.backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_bf16_autocast_gives_finite_outputs_close_to_fp32(name, kwargs):
    m = make(name, **kwargs)
    image, text = inputs()
    ref = m(image, text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(image, text)
    for got, want in ((out.tokens[text.mask], ref.tokens[text.mask]), (out.pooled, ref.pooled)):
        got = got.float()
        assert torch.isfinite(got).all()
        # bf16 keeps ~3 significant digits; a few layers deep, 10% of the scale is a loose bound.
        assert (got - want).abs().max() < 0.1 * want.abs().max() + 0.05


@pytest.mark.parametrize("name", FUSIONS.names())
def test_unknown_key_is_a_config_error_naming_the_key(name):
    with pytest.raises(ConfigError, match=r"model\.fusion\.no_such_option"):
        FUSIONS.build({"type": name, "dim": DIM, "no_such_option": 1}, "model.fusion",
                      image_dim=IMAGE_DIM, text_dim=TEXT_DIM)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_wrong_input_size_says_which_modality(name):
    m = make(name)
    image, text = inputs()
    bad = Features(tokens=image.tokens[..., :-1], mask=image.mask, pooled=image.pooled[..., :-1])
    with pytest.raises(ValueError, match=r"image features of size 48"):
        m(bad, text)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_spec_round_trip_through_safetensors(name, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    m = build(FUSIONS, {"type": name, "dim": DIM}, "model.fusion",
              image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()
    save_file(m.state_dict(), tmp_path / "f.safetensors")  # fails on shared tensors
    m2 = FUSIONS.build(m.export_spec(), "model.fusion", image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()
    m2.load_state_dict(load_file(tmp_path / "f.safetensors"), strict=True)
    image, text = inputs()
    torch.testing.assert_close(m2(image, text).pooled, m(image, text).pooled)


# ---- module-specific checks --------------------------------------------------------------

def test_projection_is_the_shared_space_formula():
    m = make("projection", norm=False)  # activation "none": Z = W_x X + W_y Y + b exactly
    with torch.no_grad():
        m.b.normal_()
    image, text = inputs()
    out = m(image, text)
    Wx, Wy, b = m.w_x.weight, m.w_y.weight, m.b
    want_tokens = text.tokens @ Wx.T + (image.pooled @ Wy.T)[:, None] + b
    want_pooled = text.pooled @ Wx.T + image.pooled @ Wy.T + b
    torch.testing.assert_close(out.tokens[text.mask], want_tokens[text.mask])
    torch.testing.assert_close(out.pooled, want_pooled)


@pytest.mark.parametrize("name,kwargs", [("attention", {}), ("attention", {"co_attention": True}),
                                         ("cross_transformer", {})])
def test_attention_fusions_treat_image_tokens_as_a_set(name, kwargs):
    # No positions are added to image tokens, so permuting them (with their mask) changes nothing.
    m = make(name, **kwargs)
    image, text = inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = Features(tokens=image.tokens[:, perm], mask=image.mask[:, perm], pooled=image.pooled)
    ref, out = m(image, text), m(shuffled, text)
    torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_cross_transformer_pooling(pool):
    m = make("cross_transformer", pool=pool)
    image, text = inputs()
    out = m(image, text)
    want = out.tokens[:, 0] if pool == "cls" else masked_mean(out.tokens, text.mask)
    torch.testing.assert_close(out.pooled, want)


def test_gate_interpolates_between_modalities():
    m = make("gated")
    image, text = inputs()
    with torch.no_grad():  # a gate fully open to the text: z = tanh(W_t t)
        m.gate_text.bias.fill_(1e4)
    out = m(image, text)
    want = torch.tanh(m.proj_text(m.norm_text(text.tokens)))
    torch.testing.assert_close(out.tokens[text.mask], want[text.mask])
    with torch.no_grad():  # fully closed: every text token gets the image's tanh(W_i i)
        m.gate_text.bias.fill_(-1e4)
    out = m(image, text)
    want = torch.tanh(m.proj_image(m.norm_image(image.pooled)))[:, None].expand(-1, T, -1)
    torch.testing.assert_close(out.tokens[text.mask], want[text.mask])


@pytest.mark.parametrize("name,spec,match", [
    ("attention", {"dim": 30, "heads": 4}, "divisible by heads"),
    ("cross_transformer", {"pool": "max"}, "pool must be 'cls' or 'mean'"),
    ("cross_transformer", {"layers": 0}, "layers must be at least 1"),
    ("projection", {"activation": "swish"}, "activation must be one of"),
    ("bilinear", {"factors": 0}, "factors must be at least 1"),
    ("concat", {"dim": "64"}, r"model\.fusion\.dim: expected int"),
])
def test_bad_options_are_config_errors(name, spec, match):
    with pytest.raises(ConfigError, match=match):
        FUSIONS.build({"type": name, **spec}, "model.fusion", image_dim=IMAGE_DIM, text_dim=TEXT_DIM)


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_recording_attention_changes_nothing_and_gives_probabilities(name, kwargs):
    """`recording_attention` (for explanations) spells attention out: the same outputs, and each
    record is a probability distribution over the real keys, in the autograd graph."""
    from polymodal.models.fusion import recording_attention

    m = make(name, **kwargs)
    image, text = inputs()
    ref = m(image, text)
    with recording_attention(m) as records:
        out = m(image, text)
    torch.testing.assert_close(out.tokens, ref.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-5, atol=1e-5)
    attends = name in ("attention", "cross_transformer", "hop_attention")
    assert bool(records) == attends
    for layer, probs in records:
        assert probs.dim() == 4 and probs.shape[0] == B and probs.requires_grad
        sums = probs.sum(-1)
        assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]), atol=1e-5)
        assert (probs >= 0).all()
    if name == "hop_attention":
        assert len(records) == m.hops and records[0][1].shape == (B, 1, 1, N)
        # padded image tokens get no attention
        assert (records[0][1][:, 0, 0][~image.mask] < 1e-6).all()
    # outside the block nothing is recorded any more
    m(image, text)
    assert all(getattr(x, "attention_record", None) is None for x in m.modules())


def test_compare_reads_the_object_heads_and_the_words():
    """hop_attention's compare term: the output moves with what the object heads read
    (`Features.attributes`) and with the words' input embeddings; a width mismatch is a ConfigError."""
    torch.manual_seed(0)
    fusion = FUSIONS.build({"type": "hop_attention", "dim": DIM, "compare": True}, "model.fusion",
                           image_dim=IMAGE_DIM, text_dim=TEXT_DIM, attribute_dim=4).eval()
    image, text = inputs()
    g = torch.Generator().manual_seed(5)
    image.attributes = torch.rand(B, N, 4, generator=g)
    text.embeddings = torch.randn(B, T, TEXT_DIM, generator=g)
    base = fusion(image, text).pooled
    other = Features(image.tokens, image.mask, image.pooled, attributes=torch.rand(B, N, 4, generator=g))
    assert not torch.allclose(fusion(other, text).pooled, base)
    words = Features(text.tokens, text.mask, text.pooled, embeddings=torch.randn(B, T, TEXT_DIM, generator=g))
    assert not torch.allclose(fusion(image, words).pooled, base)
    image.attributes = torch.rand(B, N, 3)
    with pytest.raises(ConfigError, match="built for 4"):
        fusion(image, text)


def test_attribute_match_steers_the_hops_by_what_the_heads_read():
    """hop_attention's attribute_match: silent at initialisation; once the hop's words prefer
    a value, every hop looks where the heads read that value. Without object heads: ConfigError."""
    torch.manual_seed(0)
    fusion = FUSIONS.build({"type": "hop_attention", "dim": DIM, "attribute_match": True}, "model.fusion",
                           image_dim=IMAGE_DIM, text_dim=TEXT_DIM, attribute_dim=4).eval()
    plain = FUSIONS.build({"type": "hop_attention", "dim": DIM}, "model.fusion",
                          image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()
    image, text = inputs()
    image.attributes = torch.full((B, N, 4), 0.01)
    image.attributes[:, 2, 0] = 0.99          # token 2 reads value 0 in every sample
    text.embeddings = torch.randn(B, T, TEXT_DIM)
    plain.load_state_dict({k: v for k, v in fusion.state_dict().items() if not k.startswith("match_words")})
    torch.testing.assert_close(fusion(image, text).attention, plain(image, text).attention)   # silent at init
    with torch.no_grad():
        fusion.match_words[1].bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    hops = fusion(image, text).attention.softmax(-1)          # (B, hops, N)
    assert (hops.argmax(-1) == 2).all() and (hops[..., 2] > 0.99).all()
    with pytest.raises(ConfigError, match="object heads"):
        FUSIONS.build({"type": "hop_attention", "dim": DIM, "attribute_match": True}, "model.fusion",
                      image_dim=IMAGE_DIM, text_dim=TEXT_DIM)
