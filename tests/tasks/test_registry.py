"""The task registry: every recipe's task trains its model, names resolve, prediction files
round-trip, and no module outside polymodal/tasks branches on task or family names."""
import re
from pathlib import Path

import pytest

import polymodal
from polymodal.errors import ConfigError
from polymodal.eval.run import read_predictions, write_predictions
from polymodal.models.recipes import get_recipe, list_recipes
from polymodal.processing import Processor
from polymodal.registry import OBJECTIVES, TASKS
from polymodal.tasks import Task, get_task, task_names

import polymodal.train.objectives  # noqa: F401  (registers the objectives)

SRC = Path(__file__).parents[2] / "src" / "polymodal"
TINY = [n for n in list_recipes() if n.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
def test_each_recipe_task_trains_its_model(name):
    recipe = get_recipe(name)
    model = polymodal.create_model(name)
    task = get_task(recipe["task"])
    assert task.name in model.tasks and task.trains(model)
    objectives = task.default_objectives(model)
    assert objectives and all(o["type"] in OBJECTIVES for o in objectives)
    collate = task.collator(Processor.from_spec(recipe["processor"]), model)
    assert callable(collate)


def test_names_aliases_and_errors():
    assert {"pretrain", "captioning", "vqa", "retrieval", "classification", "translation", "grounding"} <= set(task_names())
    for alias, name in (("caption", "captioning"), ("classify", "classification"), ("translate", "translation"),
                        ("ground", "grounding")):
        assert get_task(alias) is get_task(name)
    with pytest.raises(ConfigError, match="unknown task 'segmentation'; one of: .*captioning"):
        get_task("segmentation")
    with pytest.raises(ValueError, match="OBJECTIVES"):  # an objective registered in the wrong registry
        TASKS.register("itx")(type("ITX", (), {}))


@pytest.mark.parametrize("name", [n for n in ("captioning", "vqa", "classification", "translation", "grounding",
                                             "detection")])
def test_prediction_files_round_trip(name, tmp_path):
    task = get_task(name)
    value = {"grounding": [1, 2, 3, 4], "detection": [{"box": [1, 2, 3, 4], "score": 0.5}]}.get(name, "a red circle")
    write_predictions(tmp_path / "p.jsonl", task, {"7": value, "x_1": value})
    line = (tmp_path / "p.jsonl").read_text().splitlines()[0]
    assert f'"{task.id_key}": "7"' in line and f'"{task.prediction_key}"' in line
    assert read_predictions(tmp_path / "p.jsonl", name) == {"7": value, "x_1": value}
    # .json: one array, as the official result files; integer ids become JSON integers
    write_predictions(tmp_path / "p.json", task, {"7": value, "x_1": value})
    text = (tmp_path / "p.json").read_text()
    assert text.startswith("[") and f'"{task.id_key}": 7,' in text and f'"{task.id_key}": "x_1"' in text
    assert read_predictions(tmp_path / "p.json", name) == {"7": value, "x_1": value}


def test_tasks_without_a_model_say_so():
    from polymodal.errors import DataError

    with pytest.raises(DataError, match="cannot be predicted by a model here"):
        get_task("pretrain").predict(None, [])
    with pytest.raises(DataError, match="no metrics"):
        get_task("pretrain").score({}, [])
    assert Task.predict is type(get_task("pretrain")).predict


def test_no_task_or_family_branches_outside_the_task_modules():
    pattern = re.compile(r"\b(task|family) ==")
    hits = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py") if "tasks" not in p.parts
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
