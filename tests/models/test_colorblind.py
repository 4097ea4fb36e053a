"""The colour-blind stream of `conv_stem` (`colorblind: K`): what it is blind to, who reads it,
and that it reads a shape in a colour it never saw that shape in."""
import pytest
import torch
import torch.nn.functional as F

from polymodal.models.base import build
from polymodal.models.vision import ConvStemEncoder
from polymodal.registry import MODELS

_STEM = {"type": "conv_stem", "dim": 16, "depth": 2, "width": 8, "colorblind": 8}
_ATTRS = {"color": ["red", "blue"], "shape": ["square", "cross"]}


def _model(**extra):
    torch.manual_seed(0)
    return build(MODELS, {"type": "dual_encoder", "vision": {**_STEM, **extra.pop("vision", {})},
                          "text": {"type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "vocab_size": 20, "max_position_embeddings": 16},
                          "embed_dim": 8, "object_attributes": _ATTRS, **extra}, "model.spec")


def test_the_stream_is_kept_beside_the_tokens_and_blind_to_which_channel_is_which():
    stem = ConvStemEncoder(dim=16, depth=2, width=8, colorblind=8).eval()
    x = torch.randn(2, 3, 16, 16)
    f = stem(x)
    assert f.tokens.shape == (2, 16, 16) and f.colorblind.shape == (2, 16, 8)
    g = stem(x[:, [2, 0, 1]])                          # the same picture, its channels swapped
    assert torch.allclose(f.colorblind, g.colorblind, atol=1e-5)
    assert not torch.allclose(f.tokens, g.tokens, atol=1e-3)   # the main stream sees colour
    assert ConvStemEncoder(dim=16, depth=2, width=8).eval()(x).colorblind is None


def test_coords_reach_the_stream_too():
    stem = ConvStemEncoder(dim=16, depth=2, width=8, colorblind=8, coords=True).eval()
    x = torch.randn(1, 3, 16, 16)
    f = stem(x)
    assert torch.allclose(f.colorblind, stem(x[:, [1, 2, 0]]).colorblind, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_a_bad_width_is_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match="colorblind"):
        ConvStemEncoder(dim=16, depth=2, width=8, colorblind=bad)


def test_every_head_but_colour_reads_the_stream_and_every_parameter_learns():
    model = _model().train()
    assert model.colorblind_heads == ["shape"]
    assert model.object_heads["shape"].in_features == 8 and model.object_heads["color"].in_features == 16
    image = model.vision(torch.randn(2, 3, 16, 16))
    logits = model.object_logits(image)
    assert logits["shape"].shape == (2, 16, 3) and logits["color"].shape == (2, 16, 3)
    (logits["shape"].sum() + logits["color"].sum() + image.tokens.sum()).backward()
    silent = [n for n, p in model.vision.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():                              # a new main stream: shape reads the same
        before = model.object_logits(model.vision(x))
        model.vision.blocks[0][0].weight.normal_()
        after = model.object_logits(model.vision(x))
    assert torch.equal(before["shape"], after["shape"]) and not torch.allclose(before["color"], after["color"])


def test_export_spec_rebuilds_the_stream():
    model = _model().eval()
    again = build(MODELS, model.export_spec(), "model.spec").eval()
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model.vision(x).colorblind, again.vision(x).colorblind)


def _scene(shape: str, rgb: tuple[float, float, float]) -> torch.Tensor:
    """A 16 px image: one 8 px square or cross in colour `rgb` on black, at a random place."""
    img = torch.zeros(3, 16, 16)
    y, x = torch.randint(1, 7, (2,)).tolist()
    mask = torch.zeros(8, 8)
    if shape == "square":
        mask[1:7, 1:7] = 1
    else:
        mask[3:5, :] = 1
        mask[:, 3:5] = 1
    img[:, y:y + 8, x:x + 8] = mask * torch.tensor(rgb).view(3, 1, 1)
    return img * 2 - 1


def test_a_shape_is_read_in_a_colour_it_was_never_seen_in():
    """Trained on red squares and blue crosses only (colour says the shape), the shape head of
    the colour-blind stream reads blue squares and red crosses; the same head on the main
    tokens (no stream) reads the colour and gets them wrong."""
    red, blue = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)

    def accuracy(colorblind: int) -> float:
        torch.manual_seed(0)
        stem = ConvStemEncoder(dim=16, depth=2, width=8, colorblind=colorblind)
        head = torch.nn.Linear(colorblind or 16, 2)
        opt = torch.optim.Adam([*stem.parameters(), *head.parameters()], lr=1e-2)

        def read(images):
            f = stem(images)
            return head(f.colorblind if colorblind else f.tokens).mean(1)   # (B, 2)

        for _ in range(60):
            labels = torch.randint(0, 2, (32,))
            images = torch.stack([_scene(("square", "cross")[k], (red, blue)[k]) for k in labels.tolist()])
            loss = F.cross_entropy(read(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        stem.eval()
        labels = torch.randint(0, 2, (64,))
        images = torch.stack([_scene(("square", "cross")[k], (blue, red)[k]) for k in labels.tolist()])
        with torch.no_grad():
            return (read(images).argmax(-1) == labels).float().mean().item()

    assert accuracy(8) >= 0.9
    assert accuracy(0) <= 0.3
