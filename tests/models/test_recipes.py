"""Every registered recipe: builds, runs forward and backward on CPU, every trainable parameter
gets a gradient, and save -> load gives identical outputs. Tiny recipes run by default; recipes
with pretrained towers are marked slow."""
import dataclasses

import pytest
import torch

import polymodal
from polymodal.checkpoint import load_checkpoint, save_checkpoint
from polymodal.models.base import Features
from polymodal.models.detector import TextDetector
from polymodal.models.families import DualEncoder, EncoderDecoder, FusionEncoder
from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor

TINY = [n for n in polymodal.list_models() if n.endswith("-tiny")]
BIG = [n for n in polymodal.list_models() if not n.endswith("-tiny")]


def _inputs(processor, images):
    px = processor.process_images(images)
    tok = processor.tokenize(["a red circle left of a square", "how many shapes?", "two blue triangles"])
    return px, tok


def _outputs(model, px, tok):
    """Every tensor the model produces, for gradient checks and save/load equality."""
    if isinstance(model, DualEncoder):
        o = model(px, **tok)
        return [o.image_embeds, o.text_embeds, o.logit_scale]
    if isinstance(model, FusionEncoder):
        o = model(px, **tok, return_mlm=True)
        out = [o.fused.tokens, o.fused.pooled]
        for f in dataclasses.fields(o):
            v = getattr(o, f.name)
            if isinstance(v, torch.Tensor):
                out.append(v)
        return out
    if isinstance(model, EncoderDecoder):
        kw = dict(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]) if model.text else {}
        return [model(px, tok["input_ids"], tok["attention_mask"], **kw).logits]
    if isinstance(model, TextDetector):
        o = model(px, **tok)
        return [o.logits, o.boxes]
    raise AssertionError(type(model))


def _check(name, images, tmp_path):
    recipe = get_recipe(name)
    torch.manual_seed(0)
    model = polymodal.create_model(name)
    processor = Processor.from_spec(recipe["processor"])
    px, tok = _inputs(processor, images)

    model.train()
    loss = sum(o.float().pow(2).mean() for o in _outputs(model, px, tok))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:10]}"

    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, processor, recipe=name, task=recipe["task"])
    loaded, proc2, cfg = load_checkpoint(tmp_path / "ckpt")
    assert cfg["recipe"] == name and cfg["task"] == recipe["task"]
    px2, tok2 = _inputs(proc2, images)
    assert torch.equal(px, px2) and torch.equal(tok["input_ids"], tok2["input_ids"])
    with torch.no_grad():
        for a, b in zip(_outputs(model, px, tok), _outputs(loaded, px2, tok2)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", TINY)
def test_tiny_recipe_forward_backward_save_load(name, images, tmp_path):
    _check(name, images, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_pretrained_recipe_forward_backward_save_load(name, images, tmp_path):
    _check(name, images, tmp_path)


def test_every_family_has_a_tiny_recipe():
    families = {get_recipe(n)["model"]["type"] for n in TINY}
    assert {"dual_encoder", "fusion_encoder", "encoder_decoder"} <= families


def test_features_contract(images):
    """Every tiny recipe's towers give (B, N, D) tokens, (B, N) bool mask, (B, D) pooled."""
    for name in TINY:
        recipe = get_recipe(name)
        model = polymodal.create_model(name).eval()
        px, tok = _inputs(Processor.from_spec(recipe["processor"]), images)
        f = model.encode_image_features(px)
        assert isinstance(f, Features) and f.tokens.ndim == 3 and f.mask.dtype == torch.bool
        assert f.pooled.shape == (3, model.vision.dim) and f.tokens.shape[-1] == model.vision.dim
        if model.text is not None:
            t = model.encode_text_features(**tok)
            assert t.tokens.shape[:2] == tok["input_ids"].shape and t.mask.sum() == tok["attention_mask"].sum()
