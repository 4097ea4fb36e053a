"""`image_pool` of the contrastive space: "mean" (the tower's pooled feature) or "set" (`SetPool`)."""
import pytest
import torch
import torch.nn.functional as F

import polymodal
from polymodal.errors import ConfigError
from polymodal.models.base import Features
from polymodal.models.heads import SetPool

OBJECTS = {"color": ["red", "blue"], "shape": ["circle", "square"]}


def _batch(model, b=3):
    return torch.randn(b, 3, 32, 32), torch.randint(5, 50, (b, 7)), torch.ones(b, 7, dtype=torch.long)


@pytest.mark.parametrize("extra", [{}, {"object_attributes": OBJECTS}])
def test_set_pool_is_used_and_trains(extra):
    model = polymodal.create_model("clip-tiny", image_pool="set", **extra)
    model = getattr(model, "model", model)
    assert isinstance(model.image_pool, SetPool)
    pix, ids, mask = _batch(model)
    model.eval()
    with torch.no_grad():   # the MLP's last layer starts at zero: the pool starts as the tower's pooled feature
        start = model(pix, ids, mask).image_embeds
        assert torch.allclose(start, F.normalize(model.image_proj(model.vision(pix).pooled), dim=-1), atol=1e-6)
    model.train()
    opt = torch.optim.SGD(model.image_pool.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.image_pool.parameters()]
    for _ in range(2):      # the first step moves the last layer, the second the first layer too
        out = model(pix, ids, mask)
        opt.zero_grad()
        (out.image_embeds @ out.text_embeds.T).sum().backward()
        opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.image_pool.parameters()))
    # the embedding at inference is the one trained
    model.eval()
    pix, ids, mask = _batch(model, 2)
    with torch.no_grad():
        assert torch.allclose(model(pix, ids, mask).image_embeds, model.encode_image(pix), atol=1e-6)


def test_mean_pool_has_no_set_pool():
    model = polymodal.create_model("clip-tiny")
    model = getattr(model, "model", model)
    assert model.image_pool is None


def test_unknown_pool_names_the_key():
    with pytest.raises(ConfigError, match=r"model\.spec\.image_pool.*'max'"):
        polymodal.create_model("clip-tiny", image_pool="max")


def test_set_pool_ignores_padding_tokens_and_needs_attributes_it_was_built_for():
    pool = SetPool(8)
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    a = pool(Features(tokens, mask, tokens.mean(1)))
    tokens2 = tokens.clone()
    tokens2[0, 3:] = 100.0                       # padding changes: row 0 must not
    b = pool(Features(tokens2, mask, tokens.mean(1)))
    assert torch.allclose(a[0], b[0]) and a.shape == (2, 8)
    with pytest.raises(ValueError, match="attributes"):
        SetPool(8, attribute_dim=4)(Features(tokens, mask, tokens.mean(1)))
