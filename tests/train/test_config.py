"""The run config is strict, and every mistake is reported before any work starts, in words
that name the key, the file and what to do."""
from pathlib import Path

import pytest
import yaml

from _helpers import processor_for, run_config
from _synthetic import collator, records
from polymodal.errors import ConfigError, DataError
from polymodal.train import load_run_config, train
from polymodal.train.config import parse_override

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "shapes").glob("*.yaml"))


def _yaml(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_keys_name_the_key_and_the_file(tmp_path):
    path = _yaml(tmp_path, {"model": {"recipe": "clip-tiny"}, "optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    assert "optim.lrr" in str(e.value) and str(path) in str(e.value) and "lr" in str(e.value)
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_run_config(_yaml(tmp_path, {"model": {"recipe": "clip-tiny"}, "trainer": {}}))
    with pytest.raises(ConfigError, match="model.lora.rank"):
        load_run_config(_yaml(tmp_path, {"model": {"recipe": "clip-tiny", "lora": {"rank": 4}}}))


def test_wrong_types_and_missing_sections(tmp_path):
    with pytest.raises(ConfigError, match="optim.batch_size: expected int"):
        load_run_config(_yaml(tmp_path, {"model": {"recipe": "clip-tiny"}, "optim": {"batch_size": "big"}}))
    with pytest.raises(ConfigError, match="precision: expected 'auto' | 'bf16' | 'fp16' | 'no'"):
        load_run_config(_yaml(tmp_path, {"model": {"recipe": "clip-tiny"}, "precision": "fp8"}))
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        load_run_config(_yaml(tmp_path, {"task": "captioning"}))


def test_set_overrides_are_typed_like_yaml(tmp_path):
    path = _yaml(tmp_path, {"model": {"recipe": "clip-tiny"}, "optim": {"lr": "3e-4"}})  # PyYAML: a string
    cfg = load_run_config(path, ["optim.max_steps=50", "optim.lr=1e-3", "model.freeze=[vision]",
                                 "checkpointing.early_stopping_patience=3", "precision=bf16",
                                 "model.overrides.embed_dim=32", "optim.clip_grad_norm=null"])
    assert cfg.optim.max_steps == 50 and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.model.freeze == ["vision"] and cfg.model.overrides == {"embed_dim": 32}
    assert cfg.checkpointing.early_stopping_patience == 3 and cfg.precision == "bf16"
    assert cfg.optim.clip_grad_norm is None
    assert load_run_config(path).optim.lr == pytest.approx(3e-4)
    assert parse_override("a.b=1.5e-2") == (["a", "b"], 0.015)
    with pytest.raises(ConfigError, match=r"--set optim.warmup=5"):
        load_run_config(path, ["optim.warmup=5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_run_config(path, ["optim.lr"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_configs_follow_the_schema(path):
    """configs/shapes/*.yaml parse strictly, and their objectives fit their models."""
    from polymodal.tasks import get_task
    from polymodal.train.setup import build_for_training
    from polymodal.train.trainer import build_objectives

    cfg = load_run_config(path)
    if cfg.model.recipe and "small" in cfg.model.recipe:
        pytest.skip("pretrained towers: checked in the slow tests")
    cfg.model.init_from = None  # the pretraining run it points at does not exist here
    cfg.model.processor.pop("tokenizer", None)  # data/tokenizer is fitted by the user; the recipe's stands in
    setup = build_for_training(cfg.model, str(path))
    objs = cfg.objectives or get_task(cfg.task).default_objectives(setup.base)
    build_objectives(objs, setup.processor, setup.base, str(path))


def _go(tmp_path, recipe="clip-tiny", task="retrieval", recs=None, **kw):
    return train(run_config(recipe, task, tmp_path / "run", steps=2, **kw),
                 train_records=recs if recs is not None else records(task, 32),
                 collate_fn=collator(processor_for(recipe)))


def test_output_dir_holding_a_run(tmp_path):
    _go(tmp_path)
    with pytest.raises(ConfigError, match="holds a run already .*--resume"):
        _go(tmp_path)
    with pytest.raises(ConfigError, match="holds a different run.*optim.lr"):
        train(run_config("clip-tiny", "retrieval", tmp_path / "run", steps=2, lr=0.5), resume=True,
              train_records=records("retrieval", 32), collate_fn=collator(processor_for("clip-tiny")))


def test_errors_come_before_any_work(tmp_path):
    out = tmp_path / "run"
    # tokenizer / model mismatch
    with pytest.raises(ConfigError, match="tokenizer/model mismatch.*30522 tokens.*1000"):
        _go(tmp_path, model={"overrides": {"text": {"vocab_size": 1000}}})
    with pytest.raises(ConfigError, match="tokenizer/model mismatch.*bos_token_id=5"):
        _go(tmp_path, "captioner-tiny", "captioning", model={"overrides": {"decoder": {"bos_token_id": 5}}})
    # an objective the model cannot serve, an unknown objective, an unknown task
    with pytest.raises(ConfigError, match="objective lm needs an encoder_decoder"):
        _go(tmp_path, objectives=[{"type": "lm"}])
    with pytest.raises(ConfigError, match="unknown objective 'itx'.*itc"):
        _go(tmp_path, objectives=[{"type": "itx"}])
    with pytest.raises(ConfigError, match="task 'segmentation' unknown"):
        _go(tmp_path, task="segmentation")
    # data that cannot make the batches the objectives need
    bad = [{k: v for k, v in r.items() if k != "text"} for r in records("retrieval", 32)]
    with pytest.raises(DataError, match="batches lack attention_mask, input_ids"):
        _go(tmp_path, recs=bad)
    with pytest.raises(ConfigError, match="8 training records are fewer than one optimizer step"):
        _go(tmp_path, recs=records("retrieval", 8))
    # a best_metric validation never produces
    with pytest.raises(ConfigError, match="best_metric 'val/acc'.*val/itc/i2t_acc"):
        train(run_config("clip-tiny", "retrieval", out, steps=2, checkpointing={"best_metric": "val/acc"}),
              train_records=records("retrieval", 32), val_records=records("retrieval", 8, seed=1),
              collate_fn=collator(processor_for("clip-tiny")))
    # freezing a part the model does not have
    with pytest.raises(ConfigError, match="no part 'decoder'; its parts: vision, text"):
        _go(tmp_path, model={"freeze": ["decoder"]})
    assert not out.exists(), "a failed start wrote into the run directory"


def test_unknown_recipe_names_the_file(tmp_path):
    path = _yaml(tmp_path, {"model": {"recipe": "clip-huge"}, "data": {"train": "x"}})
    with pytest.raises(ConfigError, match=f"{path}: model.recipe: unknown recipe 'clip-huge'"):
        train(path)


def test_itm_needs_an_itm_head(tmp_path):
    with pytest.raises(ConfigError, match="objective itm needs a fusion_encoder built with itm: true"):
        _go(tmp_path, "vqa-tiny", "vqa", recs=records("vqa", 32), objectives=["itm"])


@pytest.mark.parametrize("key, value, allowed", [
    ("optim.batch_size", 0, ">= 1"), ("optim.grad_accum", 0, ">= 1"), ("optim.lr", -1e-3, ">= 0"),
    ("data.num_workers", -1, ">= 0"), ("optim.max_steps", -5, ">= 1"), ("optim.epochs", -1, ">= 1"),
    ("checkpointing.every", -1, ">= 0"), ("validation.every", -1, ">= 0"), ("logging.every", 0, ">= 1"),
    ("optim.betas", [0.9], "a list of 2 numbers, each >= 0 and < 1"), ("model.lora.dropout", 1.0, ">= 0 and < 1"),
    ("seed", -1, ">= 0 and < 4294967296"),
])
def test_impossible_values_name_the_file_the_key_and_the_range(tmp_path, key, value, allowed):
    data = {"model": {"recipe": "clip-tiny"}}
    node = data
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[key.split(".")[-1]] = value
    path = _yaml(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    assert str(e.value) == f"{path}: {key}: must be {allowed}, got {value!r}"
    with pytest.raises(ConfigError, match=f"{key}: must be"):  # the same through --set
        load_run_config(_yaml(tmp_path, {"model": {"recipe": "clip-tiny"}}, "ok.yaml"), [f"{key}={value}"])


def test_yaml_keys_given_twice_and_yes_no_words(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {recipe: clip-tiny}\noptim: {lr: 0.1}\nprecision: no\noptim: {batch_size: 4}\n")
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    assert str(e.value).startswith(f"{path}:4: key 'optim' is given twice (first on line 2)")
    path.write_text("model: {recipe: clip-tiny}\nprecision: no\nlogging: {progress: off, plot: yes, tensorboard: false}\n")
    cfg = load_run_config(path)  # YAML 1.1 would read `no` as False and refuse it
    assert cfg.precision == "no" and (cfg.logging.progress, cfg.logging.plot, cfg.logging.tensorboard) == (False, True, False)
    assert load_run_config(path, ["precision=no", "logging.progress=yes"]).logging.progress is True
