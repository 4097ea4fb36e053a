"""The feature cache of a frozen image tower (`model.feature_cache_gb`): the same training, once
an image; never used for a tower that trains."""
import logging

import torch
from safetensors.torch import load_file

from _helpers import processor_for, run_config
from _synthetic import collator, records
from polymodal.models.base import Features
from polymodal.train import train
from polymodal.train.feature_cache import FeatureCache, cached_frozen_tower, feature_cache_off


def _run(out, cache_gb, freeze=("vision",)):
    cfg = run_config("clip-tiny", "retrieval", out, steps=8, batch_size=8,
                     model={"freeze": list(freeze), "feature_cache_gb": cache_gb})
    return train(cfg, train_records=records("retrieval", 16), val_records=records("retrieval", 8, seed=1),
                 collate_fn=collator(processor_for("clip-tiny")))


def test_cached_run_trains_exactly_as_the_uncached_one(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="polymodal.train.feature_cache"):
        cached = _run(tmp_path / "cached", 1.0)
    assert "24 images encoded" in caplog.text   # 16 training + 8 validation images, each once
    plain = _run(tmp_path / "plain", 0.0)
    a = load_file(str(cached.last_checkpoint / "model.safetensors"))
    b = load_file(str(plain.last_checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_no_cache_for_a_tower_that_trains(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="polymodal.train.feature_cache"):
        _run(tmp_path / "run", 1.0, freeze=())
    assert "cached" not in caplog.text


class _Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, pixel_values):
        self.calls += len(pixel_values)
        t = self.lin(pixel_values.flatten(2).transpose(1, 2))          # (B, 16, 4)
        return Features(t, torch.ones(t.shape[:2], dtype=torch.bool), t.mean(1), torch.rand(16, 2))


def test_cache_answers_seen_images_and_keeps_to_its_budget():
    tower = _Tower().requires_grad_(False)
    images = torch.randn(6, 3, 4, 4)
    want = tower(images)
    tower.calls = 0
    row_bytes = (16 * 4 + 16 + 4) * 4          # tokens + mask (bool, 1 byte each: 16) + pooled
    with cached_frozen_tower(torch.nn.ModuleDict({"vision": tower}), 0) as cache:
        assert cache is None
    cache = FeatureCache(tower, max_bytes=4 * row_bytes)
    tower.cached_forward = tower.forward
    got = cache(images[[0, 1, 2, 0]])
    assert tower.calls == 3 and torch.allclose(got.tokens, want.tokens[[0, 1, 2, 0]])
    got = cache(images[[2, 3, 4, 5]])
    assert tower.calls == 6 and torch.allclose(got.tokens, want.tokens[2:])
    assert cache.bytes <= cache.max_bytes and len(cache.rows) < 6   # the oldest went
    cache(images[[0]])
    assert tower.calls == 7


def test_feature_cache_off_computes_afresh_and_keeps_nothing():
    """A view made for one step (the recoloured copy of object_attributes) passes the cache by."""
    tower = _Tower().requires_grad_(False)
    model = torch.nn.ModuleDict({"vision": tower})
    images = torch.randn(3, 3, 4, 4)
    with cached_frozen_tower(model, 1) as cache:
        model["vision"](images)
        with feature_cache_off(model):
            got = model["vision"](images + 1)
        assert cache.misses == 3 and len(cache.rows) == 3 and tower.calls == 6   # images through the tower
        torch.testing.assert_close(got.tokens, tower.cached_forward(images + 1).tokens)
        model["vision"](images)
        assert cache.hits == 3                       # the cache is back on
    with feature_cache_off(model):                   # no cache: nothing to turn off
        model["vision"](images)
