"""Object-level supervision on hand-made cases with known answers: the `hop_attention` and
`object_attributes` objectives, the batch keys the collators make for them from records, and
batches that keep the questions of one image together (each image encoded once)."""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.data.collate import VqaCollator, object_annotations
from polymodal.data.vocab import Vocab
from polymodal.models.base import Features, grid_positions
from polymodal.train._data import EpochBatches
from polymodal.train.objectives import HopAttention, ObjectAttributes


class _Out:
    """A model output with just what the two objectives read."""

    def __init__(self, attention=None, positions=None, object_logits=None, tokens=None):
        n = positions.shape[0]
        tok = tokens if tokens is not None else torch.zeros(1, n, 4)
        self.image_features = Features(tok, torch.ones(tok.shape[:2], dtype=torch.bool), tok.mean(1), positions)
        self.fused = Features(torch.zeros(tok.shape[0], 1, 4), torch.ones(tok.shape[0], 1, dtype=torch.bool),
                              torch.zeros(tok.shape[0], 4), None, attention)
        self.object_logits = object_logits


class _Model:
    """Returns a fixed output: the objectives' arithmetic is checked against hand computation."""

    def __init__(self, out, **attrs):
        self.out = out
        self.fusion = type("F", (), {"hops": 2})()
        for k, v in attrs.items():
            setattr(self, k, v)

    def __call__(self, **kwargs):
        return self.out


def test_grid_positions_are_cell_centres_row_major():
    pos = grid_positions(2, 4)
    assert pos.tolist() == [[0.125, 0.25], [0.375, 0.25], [0.625, 0.25], [0.875, 0.25],
                            [0.125, 0.75], [0.375, 0.75], [0.625, 0.75], [0.875, 0.75]]


def test_hop_attention_loss_is_softmax_mass_on_named_tokens_plus_gate_bce():
    pos = grid_positions(2, 2)                         # tokens at (.25,.25) (.75,.25) (.25,.75) (.75,.75)
    logits = torch.tensor([[[2.0, 0.0, 0.0, 0.0],     # hop 0 looks at token 0
                            [0.0, 0.0, 0.0, 1.0]]])   # hop 1 at token 3
    batch = {"pixel_values": None, "input_ids": None, "attention_mask": None,
             # hop 0 names the object at (0.2, 0.3) -> token 0; hop 1 names two objects: tokens 1 and 3
             "hop_points": torch.tensor([[[[0.2, 0.3], [0.0, 0.0]], [[0.8, 0.2], [0.7, 0.9]]]]),
             "hop_points_mask": torch.tensor([[[True, False], [True, True]]]),
             "hop_present": torch.tensor([[True, True]])}
    loss, logs = HopAttention()(_Model(_Out(logits, pos)), batch)
    target = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 1.0]]])
    pick0 = -math.log(math.exp(2) / (math.exp(2) + 3))
    pick1 = -math.log((1 + math.e) / (3 + math.e))
    expected = (pick0 + pick1) / 2 + F.binary_cross_entropy_with_logits(logits[0], target[0]).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["hit"].item() == 1.0                  # both arg-max tokens hold a named object


def test_hop_attention_an_absent_object_teaches_only_the_gates():
    pos = grid_positions(2, 2)
    logits = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    batch = {"pixel_values": None, "input_ids": None, "attention_mask": None,
             "hop_points": torch.zeros(1, 1, 1, 2), "hop_points_mask": torch.zeros(1, 1, 1, dtype=torch.bool),
             "hop_present": torch.tensor([[True]])}    # "is there a red cross?" -> none: every gate off
    loss, _ = HopAttention()(_Model(_Out(logits, pos)), batch)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits[0, 0], torch.zeros(4)).item())


def test_object_attributes_target_the_token_nearest_each_object():
    pos = grid_positions(2, 2)
    logits = {"color": torch.zeros(1, 4, 3), "shape": torch.zeros(1, 4, 2)}
    logits["color"][0, 3, 2] = 5.0                    # token 3 says "blue"
    model = _Model(_Out(positions=pos, object_logits=logits),
                   object_attributes={"color": ["red", "blue"], "shape": ["circle"]})
    batch = {"pixel_values": None, "input_ids": None, "attention_mask": None,
             "objects": [[{"point": (0.8, 0.8), "color": "blue", "shape": "circle"}]]}
    loss, logs = ObjectAttributes()(model, batch)
    t_color = torch.tensor([0, 0, 0, 2])              # background everywhere but token 3
    t_shape = torch.tensor([0, 0, 0, 1])
    expected = F.cross_entropy(logits["color"][0], t_color) + F.cross_entropy(logits["shape"][0], t_shape)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["acc"] == pytest.approx(0.5)          # colour right, shape (uniform logits) not


def test_collator_makes_points_as_fractions_of_the_image_and_shares_images():
    img = Image.new("RGB", (40, 20))
    recs = [{"id": "q0", "image_id": "7", "image": img, "question": "a?", "answers": ["yes"],
             "question_objects": [[[0, 0, 10, 10]], [[20, 10, 40, 20], [10, 0, 20, 4]]],
             "objects": [{"box": [0, 0, 10, 10], "color": "red"}]},
            {"id": "q1", "image_id": "7", "image": img, "question": "b?", "answers": ["no"],
             "question_objects": [[]]},
            {"id": "q2", "image_id": "8", "image": img, "question": "c?", "answers": ["no"]}]
    out = object_annotations(recs)
    assert out["hop_points"].shape == (3, 2, 2, 2)
    assert out["hop_points"][0, 0, 0].tolist() == [0.125, 0.25]
    assert out["hop_points"][0, 1, 1].tolist() == pytest.approx([0.375, 0.1])
    assert out["hop_present"].tolist() == [[True, True], [True, False], [False, False]]
    assert out["hop_points_mask"][1].any().item() is False   # an absent object: a present hop, no points
    assert out["objects"][0] == [{"color": "red", "point": (0.125, 0.25)}] and out["objects"][1] == []

    class Proc:
        def process_images(self, ims):
            return torch.zeros(len(ims), 3, 4, 4)

        def tokenize(self, texts, max_length=None):
            return {"input_ids": torch.ones(len(texts), 2, dtype=torch.long),
                    "attention_mask": torch.ones(len(texts), 2, dtype=torch.long)}

    batch = VqaCollator(Proc(), Vocab.build(["yes", "no"]))(recs)
    assert batch["pixel_values"].shape[0] == 2                # images 7 and 8, each once
    assert batch["image_index"].tolist() == [0, 0, 1]


def test_grouped_batches_keep_an_image_s_records_together():
    groups = [i // 3 for i in range(12)]                  # 4 images, 3 questions each
    batches = list(EpochBatches(12, 6, 1, 0, seed=0, epoch=0, groups=groups))
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:
        assert {groups[i] for i in b} and all(sum(groups[j] == groups[i] for j in b) == 3 for i in b)


def _hop_model(**extra):
    from polymodal.models.base import build
    from polymodal.registry import MODELS

    spec = {"type": "fusion_encoder", "vision": {"type": "conv_stem", "dim": 16, "depth": 2, "width": 8},
            "text": {"type": "bert", "vocab_size": 20, "hidden_size": 16, "num_attention_heads": 2},
            "fusion": {"type": "hop_attention", "dim": 16}, "labels": ["yes", "no"], **extra}
    torch.manual_seed(0)
    return build(MODELS, spec, "model.spec").eval()


def test_attribute_tokens_let_the_fusion_see_what_the_object_heads_read():
    pixels, ids = torch.randn(2, 3, 16, 16), torch.randint(1, 20, (2, 5))
    mask = torch.ones_like(ids)
    for attribute_tokens in (True, False):
        model = _hop_model(object_attributes={"color": ["red", "blue"]}, attribute_tokens=attribute_tokens)
        before = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        with torch.no_grad():
            model.object_heads["color"].weight.normal_()   # the heads read something else
        after = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(before, after) != attribute_tokens


def test_attribute_tokens_need_object_attributes():
    from polymodal.errors import ConfigError

    with pytest.raises(ConfigError, match="attribute_tokens needs object_attributes"):
        _hop_model(attribute_tokens=True)


_TINY_VISION = {"type": "conv_stem", "dim": 16, "depth": 2, "width": 8}
_COLOURS = {"color": ["red", "blue"]}


def _family(kind: str, **extra):
    from polymodal.models.base import build
    from polymodal.registry import MODELS

    text = {"type": "bert", "vocab_size": 20, "hidden_size": 16, "num_attention_heads": 2}
    spec = {"dual_encoder": {"type": "dual_encoder", "vision": _TINY_VISION, "text": text, "embed_dim": 8},
            "encoder_decoder": {"type": "encoder_decoder", "vision": _TINY_VISION,
                                "decoder": {"type": "gpt2", "vocab_size": 20, "n_embd": 16, "n_layer": 1,
                                            "n_head": 2, "n_positions": 16}}}[kind]
    torch.manual_seed(0)
    return build(MODELS, {**spec, **extra}, "model.spec").eval()


@pytest.mark.parametrize("kind", ["dual_encoder", "encoder_decoder"])
def test_attribute_tokens_reach_every_family(kind):
    """The ITC embedding of a dual encoder and the decoder's memory of an encoder-decoder see what
    the object heads read when `attribute_tokens` is on, and only then."""
    pixels, ids = torch.randn(2, 3, 16, 16), torch.randint(1, 20, (2, 5))
    for attribute_tokens in (True, False):
        model = _family(kind, object_attributes=_COLOURS, attribute_tokens=attribute_tokens)

        def seen():
            if kind == "dual_encoder":
                return model(pixels, ids, torch.ones_like(ids)).image_embeds
            return model.encode(pixels)[0]

        before = seen()
        with torch.no_grad():
            model.object_heads["color"].weight.normal_()
        assert torch.allclose(before, seen()) != attribute_tokens


def test_object_attributes_train_a_captioner_with_its_lm_loss_on_one_forward():
    """An encoder-decoder with object heads: `lm` and `object_attributes` share one forward pass
    of the batch (`Batch`), and both losses fall when trained together."""
    from polymodal.train.objectives import LM, Batch

    torch.manual_seed(0)
    model = _family("encoder_decoder", object_attributes=_COLOURS, attribute_tokens=True).train()
    pixels = torch.randn(4, 3, 16, 16)
    dec = torch.randint(1, 20, (4, 6))
    # one red object near the top-left of images 0 and 2, a blue one bottom-right of 1 and 3
    objects = [[{"point": (0.2, 0.2), "color": "red"}], [{"point": (0.8, 0.8), "color": "blue"}]] * 2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    calls, first = [], None
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    for step in range(60):
        batch = Batch(pixel_values=pixels, decoder_input_ids=dec, decoder_attention_mask=torch.ones_like(dec),
                      objects=objects)
        calls.clear()
        (lm, _), (obj, logs) = LM()(model, batch), ObjectAttributes()(model, batch)
        assert len(calls) == 1
        if first is None:
            first = (lm.item(), obj.item())
        opt.zero_grad()
        (lm + obj).backward()
        opt.step()
    assert lm.item() < 0.5 * first[0] and obj.item() < 0.5 * first[1]
    assert logs["acc"].item() == 1.0


def test_hue_rotate_keeps_greys_and_cycles_the_primaries():
    from polymodal.train.objectives import hue_rotate

    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    rgb = torch.rand(2, 3, 4, 4)
    rgb[:, :, 0, 0] = 0.3                                      # a grey pixel
    x = (rgb - mean) / std
    torch.testing.assert_close(hue_rotate(x, mean, std, torch.zeros(2)), x)
    turned = hue_rotate(x, mean, std, torch.full((2,), 2 * math.pi / 3)) * std + mean
    torch.testing.assert_close(turned, rgb[:, [2, 0, 1]], atol=1e-5, rtol=1e-5)   # R<-B, G<-R, B<-G
    rand = hue_rotate(x, mean, std) * std + mean
    torch.testing.assert_close(rand[:, :, 0, 0], torch.full((2, 3), 0.3), atol=1e-5, rtol=1e-5)


def test_object_attributes_recolor_trains_hue_invariant_heads_on_a_second_view():
    """recolor: the shape and size heads (not colour) also learn on hue-rotated images, with the
    same targets; only in training; bad settings are ConfigErrors naming the field."""
    from polymodal.errors import ConfigError

    attrs = {"color": ["red", "blue"], "shape": ["circle", "square"], "size": ["small", "large"]}
    model = _hop_model(object_attributes=attrs).train()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    objects = [[{"point": (0.3, 0.3), "color": "red", "shape": "square", "size": "small"}]] * 3
    batch = {"pixel_values": pixels, "input_ids": torch.randint(1, 20, (3, 4)),
             "attention_mask": torch.ones(3, 4, dtype=torch.long), "objects": objects}
    plain = ObjectAttributes()
    base, logs = plain(model, batch)
    assert "recolor_acc" not in logs
    obj = ObjectAttributes(recolor=1.0)
    obj.check(model)
    seen = []
    hook = model.vision.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    torch.manual_seed(0)
    loss, logs = obj(model, batch)
    hook.remove()
    assert "recolor_acc" in logs and loss.item() > base.item()
    assert len(seen) == 2 and not torch.allclose(seen[1], pixels)   # the second view is recoloured
    model.object_heads["shape"].weight.grad = None
    loss.backward()
    assert model.object_heads["shape"].weight.grad.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(obj(model, batch)[0], plain(model, batch)[0])  # no second view in eval
    for bad, match in (({"recolor": 1.5}, "recolor"), ({"recolor": 0.5, "recolor_attributes": "shape"}, "recolor_attributes")):
        with pytest.raises(ConfigError, match=match):
            ObjectAttributes(**bad)
    with pytest.raises(ConfigError, match="texture"):
        ObjectAttributes(recolor=0.5, recolor_attributes=["texture"]).check(model)
    with pytest.raises(ConfigError, match="no attribute left"):
        ObjectAttributes(recolor=0.5).check(_hop_model(object_attributes={"color": ["red"]}))
