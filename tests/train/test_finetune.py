"""Fine-tuning set-ups: start from a checkpoint of another architecture, freeze towers, train
LoRA adapters (peft), and resume such runs."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

import polymodal
from _helpers import processor_for, run_config
from _synthetic import collator, records
from polymodal.train import train


def _run(recipe, task, out, steps, **kw):
    return train(run_config(recipe, task, out, steps=steps, **kw), train_records=records(task, 64),
                 collate_fn=collator(processor_for(recipe)))


def _weights(res, step=None):
    d = res.last_checkpoint if step is None else res.output_dir / f"step-{step:06d}"
    return load_file(str(d / "model.safetensors"))


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    """A captioner trained a few steps: the checkpoint the fine-tunes start from."""
    return _run("captioner-tiny", "captioning", tmp_path_factory.mktemp("cap") / "run", 4)


def test_init_from_another_architecture_with_a_frozen_tower(captioner, tmp_path):
    """captioner -> translator: vision and decoder come from the checkpoint, the text tower is
    new; the frozen vision tower (weights and BatchNorm statistics) does not move."""
    start = _weights(captioner)
    res = _run("translator-tiny", "translation", tmp_path / "run", 6,
               model={"init_from": str(captioner.last_checkpoint), "freeze": ["vision"]})
    end = _weights(res)
    vision = [k for k in start if k.startswith("vision.")]
    assert any("running_mean" in k for k in vision)
    for k in vision:
        assert torch.equal(start[k], end[k]), k
    moved = [k for k in start if k.startswith("decoder.") and not torch.equal(start[k], end[k])]
    assert moved, "the decoder did not train"
    assert any(k.startswith("text.") for k in end) and not any(k.startswith("text.") for k in start)



def test_init_parts_take_one_part_from_another_checkpoint(captioner, tmp_path):
    """init_from gives every weight, init_parts.vision then replaces the vision tower's with
    another run's; the rest stays the first checkpoint's. An unknown part is a ConfigError."""
    from polymodal.errors import ConfigError

    other = _run("captioner-tiny", "captioning", tmp_path / "other", 3, seed=7)
    first, second = _weights(captioner), _weights(other)
    res = _run("captioner-tiny", "captioning", tmp_path / "run", 1, lr=1e-12,
               model={"init_from": str(captioner.last_checkpoint),
                      "init_parts": {"vision": str(other.last_checkpoint)}, "freeze": ["vision"]})
    end = _weights(res)
    vision = [k for k in end if k.startswith("vision.")]
    assert vision and all(torch.equal(end[k], second[k]) for k in vision)
    assert any(not torch.equal(first[k], second[k]) for k in vision), "the two runs' towers differ"
    decoder = [k for k in end if k.startswith("decoder.")]
    assert all(torch.allclose(end[k], first[k], atol=1e-6) for k in decoder)   # (lr 1e-12)
    with pytest.raises(ConfigError, match="no part 'visoin'"):
        _run("captioner-tiny", "captioning", tmp_path / "bad", 1,
             model={"init_from": str(captioner.last_checkpoint), "init_parts": {"visoin": str(other.last_checkpoint)}})

def test_lora_trains_adapters_only_and_saves_a_plain_checkpoint(captioner, tmp_path):
    base = _run("translator-tiny", "translation", tmp_path / "base", 2,
                model={"init_from": str(captioner.last_checkpoint)})
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value", "c_attn"]}
    res = _run("translator-tiny", "translation", tmp_path / "lora", 10, lr=1e-2,
               model={"init_from": str(base.last_checkpoint), "lora": lora},
               checkpointing={"every": 5, "keep_last": 2}, logging={"every": 1})
    before, after = _weights(base), _weights(res)
    assert before.keys() == after.keys(), "the checkpoint holds the merged weights under the plain names"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapted = {k for k in before if k.endswith(("query.weight", "value.weight", "c_attn.weight"))}
    assert changed and changed <= adapted, sorted(changed - adapted)[:5]
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert losses[-1] < losses[0]
    # The merged checkpoint is an ordinary polymodal checkpoint.
    m = polymodal.load(res.last_checkpoint)
    assert len(m.translate([records("translation", 1)[0]["image"]], ["a colourful thing"], max_new_tokens=4)) == 1

    # Resuming a LoRA run restores the adapters (not the merged weights) and ends where it did.
    final = _weights(res)
    shutil.rmtree(res.output_dir / "step-000010")
    again = train(run_config("translator-tiny", "translation", tmp_path / "lora", steps=10, lr=1e-2,
                             model={"init_from": str(base.last_checkpoint), "lora": lora},
                             checkpointing={"every": 5, "keep_last": 2}, logging={"every": 1}),
                  resume=True, train_records=records("translation", 64),
                  collate_fn=collator(processor_for("translator-tiny")))
    assert again.step == 10
    resumed = _weights(again)
    assert max((final[k] - resumed[k]).abs().max().item() for k in final) < 1e-5


def test_validation_best_checkpoint_and_early_stopping(tmp_path):
    """A lr of 0 never improves: early stopping ends the run after `patience` validations, and
    best/ holds the first validated weights."""
    res = train(run_config("clip-tiny", "retrieval", tmp_path / "run", steps=50, lr=0.0,
                           checkpointing={"every": 2, "early_stopping_patience": 2},
                           optim={"warmup_steps": 0}),
                train_records=records("retrieval", 64), val_records=records("retrieval", 16, seed=1),
                collate_fn=collator(processor_for("clip-tiny")))
    assert res.stopped_early and res.step == 6
    assert res.best_checkpoint is not None and (res.best_checkpoint / "model.safetensors").is_file()
    vals = [r for r in res.history if "val/loss" in r]
    assert [r["step"] for r in vals] == [2, 4, 6]
    assert polymodal.load(res.best_checkpoint).embed_texts(["a red image"]).shape == (1, 64)
    for name in ("metrics.jsonl", "metrics.csv", "config.yaml"):
        assert (res.output_dir / name).is_file()


@pytest.mark.slow
def test_lora_on_the_packaged_pretrained_towers(tmp_path):
    """configs/shapes/vqa-lora.yaml's set-up: EfficientNet-Lite0 frozen, LoRA in MiniLM."""
    lora = {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "train_also": ["fusion", "classifier"]}
    res = train(run_config("vqa-small", "vqa", tmp_path / "run", steps=3, batch_size=4,
                           model={"freeze": ["vision"], "lora": lora,
                                  "overrides": {"labels": ["yes", "no", "red", "green", "blue", "yellow",
                                                           "white", "black"]}}),
                train_records=records("vqa", 16), collate_fn=collator(processor_for("vqa-small")))
    m = polymodal.load(res.last_checkpoint)
    assert m.answer([records("vqa", 1)[0]["image"]], ["what colour is it?"])[0] in m.model.labels
