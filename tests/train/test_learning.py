"""It learns: every objective's loss falls, and every task's tiny fine-tune beats chance on
held-out records (new noise, new seed), judged through the checkpoint it wrote
(`polymodal.load`), as a user would."""
import numpy as np
import pytest
import torch

import polymodal
from _synthetic import COLOURS, NAMES, VQA_ANSWERS, records

HELD_OUT = 60


def _curve(res, key):
    return [r[key] for r in res.history if key in r and not any(k.startswith("val/") for k in r)]


def _falls(curve, factor):
    """The mean of the last three logged values is below `factor` x the mean of the first three."""
    first, last = np.mean(curve[:3]), np.mean(curve[-3:])
    assert last < factor * first, f"loss did not fall enough: {curve}"


def _chance(answers):
    """Accuracy of always giving the most common answer."""
    _, counts = np.unique(answers, return_counts=True)
    return counts.max() / len(answers)


def test_itc_retrieval(tiny_run, tmp_path):
    res = tiny_run("clip-tiny", "retrieval", tmp_path, steps=40, lr=1e-3, batch_size=32, ids_by_colour=True)
    _falls(_curve(res, "itc/loss"), 0.5)
    test = records("retrieval", HELD_OUT, seed=7)
    m = polymodal.load(res.last_checkpoint)
    pred = [p["label"] for p in m.classify([r["image"] for r in test], NAMES, template="a {} image")]
    acc = np.mean([p == r["colour"] for p, r in zip(pred, test)])
    assert acc > 3 / len(COLOURS), acc  # chance 1/6


def test_lm_captioning(tiny_run, tmp_path):
    res = tiny_run("captioner-tiny", "captioning", tmp_path, steps=80)
    _falls(_curve(res, "lm/loss"), 0.3)
    test = records("captioning", HELD_OUT, seed=7)
    captions = polymodal.load(res.last_checkpoint).caption([r["image"] for r in test], max_new_tokens=6)
    # chance: a right caption for 1 colour in 6
    acc = np.mean([c == r["target"] for c, r in zip(captions, test)])
    assert acc > 2 / len(COLOURS), (acc, captions[:6])


def test_lm_translation(tiny_run, tmp_path):
    """The source sentence leaves the colour out; only the image can supply it."""
    res = tiny_run("translator-tiny", "translation", tmp_path, steps=100, batch_size=32)
    test = records("translation", HELD_OUT, seed=7)
    out = polymodal.load(res.last_checkpoint).translate([r["image"] for r in test], [r["text"] for r in test],
                                                        max_new_tokens=8)
    acc = np.mean([o == r["target"] for o, r in zip(out, test)])
    assert acc > 2 / len(COLOURS), (acc, out[:6])


def test_lm_generative_vqa(tiny_run, tmp_path):
    res = tiny_run("translator-tiny", "vqa", tmp_path, steps=100, lr=3e-3, batch_size=32)
    test = records("vqa", HELD_OUT, seed=7)
    answers = polymodal.load(res.last_checkpoint).answer([r["image"] for r in test], [r["text"] for r in test],
                                                         max_new_tokens=3)
    acc = np.mean([a == r["target"] for a, r in zip(answers, test)])
    assert acc > _chance([r["target"] for r in test]) + 0.2, (acc, answers[:8])


def test_vqa_classification(tiny_run, tmp_path):
    res = tiny_run("vqa-tiny", "vqa", tmp_path, steps=100, batch_size=32, model={"overrides": {"labels": VQA_ANSWERS}})
    _falls(_curve(res, "vqa_classification/loss"), 0.6)
    test = records("vqa", HELD_OUT, seed=7)
    answers = polymodal.load(res.last_checkpoint).answer([r["image"] for r in test], [r["text"] for r in test])
    acc = np.mean([a == r["target"] for a, r in zip(answers, test)])
    assert acc > _chance([r["target"] for r in test]) + 0.2, (acc, answers[:8])


def test_multimodal_classification(tiny_run, tmp_path):
    """True / false statements about the image colour: needs the image and the text together."""
    res = tiny_run("classifier-tiny", "classification", tmp_path, steps=120, batch_size=32)
    _falls(_curve(res, "classification/loss"), 0.7)
    test = records("classification", HELD_OUT, seed=7)
    pred = polymodal.load(res.last_checkpoint).classify([r["image"] for r in test], texts=[r["text"] for r in test])
    acc = np.mean([p["label"] == ["false", "true"][r["label"]] for p, r in zip(pred, test)])
    assert acc > max(0.65, _chance([r["label"] for r in test]) + 0.1), acc


def test_pretraining_itc_itm_mlm(tiny_run, tmp_path):
    """The three ALBEF objectives together: each one's loss falls."""
    res = tiny_run("pretrain-tiny", "pretrain", tmp_path, steps=90, ids_by_colour=True)
    assert {"itc/loss", "itm/loss", "mlm/loss"} <= set(res.history[0])
    _falls(_curve(res, "itc/loss"), 0.7)
    _falls(_curve(res, "mlm/loss"), 0.65)
    _falls(_curve(res, "itm/loss"), 0.5)


def test_bf16_autocast_trains(tiny_run, tmp_path):
    res = tiny_run("clip-tiny", "retrieval", tmp_path, steps=40, lr=1e-3, batch_size=32, ids_by_colour=True,
                   precision="bf16")
    _falls(_curve(res, "itc/loss"), 0.7)
    assert "precision: bf16" in (res.output_dir / "config.yaml").read_text()


def test_auto_precision_measures_without_side_effects(tiny_run, tmp_path):
    """"auto" on CPU times a step in fp32 and bf16 (eval mode, forked RNG): the run it then
    makes is the run the chosen precision makes when asked for directly."""
    from safetensors.torch import load_file

    auto = tiny_run("clip-tiny", "retrieval", tmp_path / "auto", steps=6, precision="auto")
    chosen = "bf16" if "precision: bf16" in (auto.output_dir / "config.yaml").read_text() else "no"
    direct = tiny_run("clip-tiny", "retrieval", tmp_path / "direct", steps=6, precision=chosen)
    a = load_file(str(auto.last_checkpoint / "model.safetensors"))
    b = load_file(str(direct.last_checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_measurement_stops_once_the_choice_is_clear(monkeypatch):
    """After the warm-up round, a precision twice as slow as the other ends the measurement
    (no repeat could change the choice); close times get every repeat."""
    import time as time_module

    from polymodal.train import precision

    for slow_bf16, rounds, choice in ((10.0, 2, "no"), (1.05, 3, "no"), (0.3, 2, "bf16")):
        clock, calls = [0.0], []

        def step():
            bf16 = torch.is_autocast_enabled("cpu")
            calls.append(bf16)
            clock[0] += slow_bf16 if bf16 else 1.0

        monkeypatch.setattr(time_module, "perf_counter", lambda: clock[0])
        assert precision.measure_bf16(step, repeats=2) == choice
        assert len(calls) == 2 * rounds, (slow_bf16, calls)


def test_auto_precision_skips_the_step_test_where_bf16_has_no_path(monkeypatch):
    """A bf16 matmul far slower than fp32 (no bf16 path) decides fp32 without timing a step;
    otherwise the step is timed."""
    from polymodal.train import trainer

    timed = []
    monkeypatch.setattr(trainer, "measure_bf16", lambda step: timed.append(step) or "bf16")
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(trainer, "bf16_matmul_slowdown", lambda: 40.0)
    assert trainer._measure_precision(model, [], {}) == "no" and not timed
    monkeypatch.setattr(trainer, "bf16_matmul_slowdown", lambda: 0.5)
    assert trainer._measure_precision(model, [], {}) == "bf16" and len(timed) == 1


def test_bf16_matmul_probe_is_measured_once_per_process():
    from polymodal.train.precision import bf16_matmul_slowdown

    first = bf16_matmul_slowdown()
    assert first > 0 and bf16_matmul_slowdown() == first
