"""A task added from outside the package: defined, registered, trained, evaluated, saved,
loaded and run through the CLI here, with no change to polymodal (docs/architecture.md walks
through the same example)."""
import json

import torch
import yaml
from typer.testing import CliRunner

import polymodal
from polymodal.cli import app
from polymodal.data.collate import Collator
from polymodal.tasks import Task, get_task, register_task
from polymodal.tasks.base import batched, metric

QUESTION = "how many objects are there?"
runner = CliRunner()


class CountCollator(Collator):
    """Image + a fixed question -> the object count as a class index of the model's labels."""

    vocab_arg = "labels"

    def __init__(self, processor, labels, max_length=None):
        super().__init__(processor, max_length)
        self.labels = labels

    def collate(self, items):
        counts = [str(len(x["scene"]["objects"])) for x in items]
        return {**self._tokens([QUESTION] * len(items)), "labels": torch.tensor([self.labels.index(c) for c in counts])}


@register_task
class ObjectCount(Task):
    """Count the objects of a scene: {"image", "count"}."""

    name = "object_count"
    fields = ("image", "scene")
    shapes_file = "captions"                                     # one record per image, with its scene
    collators = {"fusion_encoder": CountCollator}
    objectives = {"fusion_encoder": [{"type": "classification"}]}
    prediction_key = "count"
    method = "count"
    command = "count"
    kind = "object counter"

    def labels(self, records, family):
        return sorted({str(len(r["scene"]["objects"])) for r in records})

    def run(self, loaded, images, **_):
        return [p["label"] for p in loaded.classify(images, texts=[QUESTION] * len(images))]

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        counts = batched(lambda ims, _: model.count(ims), records, batch_size)
        return {r["id"]: c for r, c in zip(records, counts)}

    def score(self, predictions, records, lang="en"):
        ids = [r["id"] for r in records if r["id"] in predictions]
        gold = {r["id"]: str(len(r["scene"]["objects"])) for r in records}
        return metric({"type": "classification"})(references=[gold[i] for i in ids],
                                                   predictions=[predictions[i] for i in ids])


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_a_task_defined_here_trains_evaluates_loads_and_runs_from_the_cli(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    res = runner.invoke(app, ["data", "generate", "shapes", "--out", str(data), "--n", "120", "--size", "32",
                              "--split", "train=96,val=24", "--max-objects", "3", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert get_task("object_count").trains(polymodal.create_model("vqa-tiny"))

    # train: `task: object_count` in a config, through `polymodal train`
    cfg = {"task": "object_count", "model": {"recipe": "vqa-tiny", "processor": {"image": {"image_size": 32}}},
           "data": {"train": f"shapes:{data}", "val": f"shapes:{data}"},
           "optim": {"max_steps": 12, "batch_size": 16, "lr": 2e-3},
           "checkpointing": {"every": 0, "keep_last": 1},
           "logging": {"every": 4, "progress": False, "plot": False, "tensorboard": False},
           "precision": "no", "output_dir": str(run)}
    (tmp_path / "count.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(tmp_path / "count.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    ckpt = _json_lines(res.output)[-1]["last_checkpoint"]
    saved = json.loads((run / "step-000012" / "config.json").read_text())
    assert saved["task"] == "object_count"
    assert saved["model"]["labels"] == ["1", "2", "3"]              # the task's labels() from the data

    # load: the model offers the task's method, and says what it is
    loaded = polymodal.load(ckpt)
    assert "count" in loaded.tasks and loaded.kind == "object counter"
    image = str(data / "images" / "000119.png")                   # the last val image (record id "119")
    [py_count] = loaded.count([image])
    assert py_count in ("1", "2", "3")

    # evaluate: predictions by the task, scored by the task, written in its prediction-file keys
    preds = tmp_path / "preds.jsonl"
    res = runner.invoke(app, ["eval", "--model", ckpt, "--data", str(data), "--task", "object_count",
                              "--split", "val", "--save-predictions", str(preds), "--json"])
    assert res.exit_code == 0, res.output
    result = _json_lines(res.output)[-1]
    assert result["task"] == "object_count" and result["n"] == 24
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 24 and all(set(r) == {"id", "count"} for r in rows)
    by_id = {r["id"]: r["count"] for r in rows}
    # the saved predictions score the same through --predictions
    res = runner.invoke(app, ["eval", "--predictions", str(preds), "--data", str(data), "--task", "object_count",
                              "--split", "val", "--json"])
    assert res.exit_code == 0, res.output
    assert _json_lines(res.output)[-1]["metrics"]["accuracy"] == result["metrics"]["accuracy"]

    # run: the task's own command, same answer as the Python API and the evaluation
    res = runner.invoke(app, ["count", "--model", ckpt, image, "--json"])
    assert res.exit_code == 0, res.output
    [row] = _json_lines(res.output)
    assert row == {"image": image, "count": py_count} and by_id["119"] == py_count
