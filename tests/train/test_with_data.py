"""Training from dataset specs through polymodal.data (the shapes world): the collators' batches
reach the objectives in the keys of docs/training.md, and `polymodal train` runs a config."""
import pytest
import torch
import yaml
from typer.testing import CliRunner

import typer

import polymodal
from _helpers import processor_for
from polymodal.tasks import get_task
from polymodal.train import train
from polymodal.train.cli import train_command


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from polymodal.data.shapes import ANSWERS, generate

    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, n=60, size=32, splits={"train": 48, "val": 12}, workers=1)
    return out, list(ANSWERS)


def _cfg(recipe, task, data, out, **model):
    return {"task": task, "model": {"recipe": recipe, "processor": {"image": {"image_size": 32}}, **model},
            "data": {"train": f"shapes:{data}", "val": f"shapes:{data}"},
            "optim": {"max_steps": 4, "batch_size": 8},
            "checkpointing": {"every": 2, "keep_last": 1},
            "logging": {"every": 1, "progress": False, "plot": True, "tensorboard": False},
            "precision": "no", "output_dir": str(out)}


def test_contract_keys_from_the_data_collators(shapes):
    from polymodal.data.dataset import build_dataset

    data, answers = shapes
    model = polymodal.create_model("captioner-tiny")
    collate = get_task("captioning").collator(processor_for("captioner-tiny"), model)
    ds = build_dataset(f"shapes:{data}:captions", "train")
    batch = collate([ds[0], ds[1]])
    assert batch["decoder_input_ids"][:, 0].tolist() == [101, 101]  # [CLS] = BOS
    assert ((batch["decoder_input_ids"] == 102).sum(1) == 1).all()  # one [SEP] = EOS each
    assert "labels" not in batch and batch["decoder_attention_mask"].dtype == torch.long
    pair = get_task("retrieval").collator(processor_for("clip-tiny"), polymodal.create_model("clip-tiny"))
    b = pair([ds[0], ds[0], ds[1]])
    assert b["image_ids"].dtype == torch.long and b["image_ids"][0] == b["image_ids"][1] != b["image_ids"][2]


def test_train_captioner_from_a_dataset_spec(shapes, tmp_path):
    data, _ = shapes
    res = train(_cfg("captioner-tiny", "captioning", f"{data}:captions", tmp_path / "run"))
    assert res.step == 4 and (res.output_dir / "curves.png").stat().st_size > 1000
    assert [r["step"] for r in res.history if "val/loss" in r] == [2, 4]
    assert len(polymodal.load(res.last_checkpoint).caption([str(next((data / "images").rglob("*.png")))])) == 1


def test_train_vqa_classifier_with_soft_scores(shapes, tmp_path):
    data, answers = shapes
    res = train(_cfg("vqa-tiny", "vqa", f"{data}:vqa", tmp_path / "run", overrides={"labels": answers}))
    assert "vqa_classification/score" in res.history[0]  # answer_scores reached the objective


def test_cli_trains_a_config(shapes, tmp_path):
    data, _ = shapes
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(yaml.safe_dump(_cfg("clip-tiny", "retrieval", f"{data}:captions", tmp_path / "ignored")))
    app = typer.Typer()
    app.command("train")(train_command)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["train", str(cfg), "--set", "optim.max_steps=2", "--output-dir",
                                   str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"step": 2' in res.output and (tmp_path / "run" / "step-000002" / "model.safetensors").is_file()
