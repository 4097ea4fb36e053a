"""AdamW parameter groups and the learning-rate schedule."""
import math

import pytest

import polymodal
from polymodal.train.optim import lr_factor, param_groups


def test_no_weight_decay_on_biases_norms_and_scalars():
    model = polymodal.create_model("clip-tiny")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    nd = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in nd
    assert all(n.endswith(("bias", "weight")) for n in nd if n != "logit_scale")
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("LayerNorm.weight" in n or "norm.weight" in n for n in nd)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_to_the_floor():
    f = [lr_factor(s, warmup=10, total=110, schedule="cosine", min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)  # linear warm-up
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone after warm-up
    assert lr_factor(50, warmup=0, total=100, schedule="linear", min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(99, warmup=0, total=100, schedule="constant", min_ratio=0.0) == 1.0
