"""The `Task` contract and the task registry: the one place that knows what a task is.

A task (captioning, VQA, classification, retrieval, translation, pretraining, grounding, or one
you add) owns every task-specific decision of the package:

| what                        | attribute / method              | used by                          |
|-----------------------------|---------------------------------|----------------------------------|
| record fields it needs      | `fields`                        | `polymodal data validate --task` |
| shapes-world record file    | `shapes_file`                   | train / eval on a shapes dir     |
| batch layout per family     | `collators`, `collator()`       | the trainer                      |
| classifier outputs          | `labels()`                      | the trainer (fusion classifiers) |
| default losses per family   | `objectives`, `default_objectives()` | the trainer                 |
| predictions of a model      | `predict()`                     | `polymodal eval`                 |
| metrics                     | `score()`                       | `polymodal eval`                 |
| the best score data allow   | `ceiling()`                     | `polymodal eval [--ceiling]`     |
| prediction-file line        | `id_key`, `prediction_key`      | `eval --predictions/--save-predictions` |
| the loaded-model method     | `method`, `offered_by()`, `run()` | `polymodal.load(...)`          |
| the CLI command             | `command`, `cli()`              | `polymodal <command>`            |

Tasks are registered by name (`@register_task`), and the rest of the package asks the
registry (`get_task(name)`) instead of branching on task names. Which model families a task
trains is a table keyed by the family's registered name (like transformers'
`MODEL_FOR_*_MAPPING`); a family also lists the built-in tasks it serves (`Family.tasks`).
Adding a task is one file: subclass `Task`, fill in what differs, decorate it with
`@register_task` (docs/architecture.md walks through an example).

Heavy imports (torch, the data and metric modules) happen inside the methods, so importing
the registry stays cheap.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from polymodal.errors import ConfigError, DataError
from polymodal.registry import TASKS

#: Called with every task registered from now on (the CLI mounts task commands this way).
_LISTENERS: list[Callable[["Task"], None]] = []
_ALIASES: dict[str, str] = {}


class Task:
    """What a task is. Subclasses set the attributes and override what differs.

    Attributes:
        name: the registered name (`task:` in a run config, `--task` of `polymodal eval`).
        aliases: other names accepted for it (the collators' short names: "caption", ...).
        fields: record fields a record needs for this task; a tuple inside means "one of".
        shapes_file: the shapes-world record file it reads (`{shapes_file}_{split}.jsonl`).
        collators: model family -> collator: a name of `polymodal.data.collate.COLLATORS` or a
            `Collator` subclass of the task's own ("*": any other family). A family named here is
            one the task trains, besides the families that list the task themselves (`tasks` of
            polymodal.models.families).
        objectives: model family -> default objective specs (`[{"type": "lm"}]`); "*": any.
        prediction_key: the value key of a prediction file's objects (None: no prediction file).
        id_key: their id key (a JSON Lines line or an item of an official result array).
        method: the `LoadedModel` method that runs the task (`caption`, `answer`, ...).
        methods: every `LoadedModel` method the task brings (default: `(method,)`).
        command: the `polymodal` CLI command that runs it.
        kind: what a checkpoint trained for this task is, in words ("captioner").
        generates: the model writes text (evaluation passes beams / max tokens).
        max_new_tokens: a fixed generation length for evaluation (None: the command's).
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    fields: tuple = ()
    shapes_file: str | None = None
    collators: dict[str, Any] = {}
    objectives: dict[str, list[dict]] = {}
    prediction_key: str | None = None
    id_key: str = "id"
    method: str | None = None
    methods: tuple[str, ...] = ()
    command: str | None = None
    kind: str = "model"
    generates: bool = False
    max_new_tokens: int | None = None

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------------------ training
    def trains(self, model) -> bool:
        """Whether this task trains `model`: the model's family lists the task (`Family.tasks`),
        or the task names the family in its `collators` table (a task added later)."""
        return self.name in getattr(model, "tasks", ()) or family_of(model) in self.collators

    def _for(self, table: dict, family: str, what: str):
        if family in table:
            return table[family]
        if "*" in table:
            return table["*"]
        raise ConfigError(f"task {self.name!r} has no {what} for a {family} model; it trains "
                          f"{', '.join(sorted(self.collators)) or 'no model family'}")

    def collator(self, processor, model, text_field: str | None = None) -> Callable[[list[dict]], dict]:
        """The collator that turns this task's records into batches for `model` (its family).

        Args:
            processor: the model's Processor. model: the built model (its `labels`, if any,
                become the collator's vocabulary). text_field: the caption field to train on.
        """
        from polymodal.data.collate import make_collator

        name = self._for(self.collators, family_of(model), "collator")
        labels = list(getattr(model, "labels", None) or []) or None
        return make_collator(name, processor, labels=labels, **self.collator_options(name, text_field))

    def collator_options(self, collator, text_field: str | None) -> dict:
        """Extra keyword arguments of the collator (the caption field for caption-like ones)."""
        return {"field": text_field} if text_field and collator in ("caption", "pretrain") else {}

    def labels(self, records: Sequence[dict], family: str | None) -> list[str] | None:
        """The classifier outputs a model of `family` needs, from the train records (None: none)."""
        return None

    def default_objectives(self, model) -> list[dict]:
        """The objectives a run trains with when its config lists none."""
        return [dict(o) for o in self._for(self.objectives, family_of(model), "default objectives")]

    # ---------------------------------------------------------------------------- evaluation
    def predict(self, model, records: list[dict], batch_size: int = 32, lang: str = "en", **generation) -> dict:
        """Predictions {record key: value} of a LoadedModel on `records`."""
        raise DataError(f"task {self.name!r} cannot be predicted by a model here; score a predictions file "
                        f"instead (--predictions). Tasks with a model: {', '.join(evaluated_by_model())}")

    def score(self, predictions: dict, records: list[dict], lang: str = "en") -> dict[str, float]:
        """Metrics of `predictions` against the records' references."""
        raise DataError(f"task {self.name!r} has no metrics; evaluate a fine-tuned task "
                        f"({', '.join(evaluated_by_model())})")

    def ceiling(self, records: list[dict], lang: str = "en") -> dict[str, float]:
        """What an ideal model would score on `records`, where the data make a perfect score
        impossible and say by how much (retrieval on shapes-world scenes); {} when not known."""
        return {}

    def blind(self, records: list[dict], train: list[dict]) -> dict | None:
        """Predictions that see no image, learnt from the `train` records (VQA: the question-only
        prior); None when the task has no such baseline."""
        return None

    def shuffled(self, predictions: dict, seed: int = 0) -> dict:
        """The same predictions assigned to random other items: the chance level a model must beat."""
        keys = list(predictions)
        values = [predictions[k] for k in keys]
        random.Random(seed).shuffle(values)
        return dict(zip(keys, values))

    def record_key(self, record: dict) -> str:
        """The key of a record's prediction."""
        return record["id"]

    # ----------------------------------------------------------------------------- inference
    def offered_by(self, model, trained_for: str) -> bool:
        """Whether a native model (an nn.Module) trained for task `trained_for` offers `method`."""
        return trained_for == self.name and self.trains(model)

    def loaded_methods(self) -> tuple[str, ...]:
        """The LoadedModel methods a model offering this task has."""
        return self.methods or ((self.method,) if self.method else ())

    def run(self, loaded, images: Sequence[Any], **inputs) -> list:
        """The `method` of a loaded model for tasks that `LoadedModel` has no method for."""
        raise NotImplementedError(f"task {self.name!r} runs through LoadedModel.{self.method}")

    def cli(self) -> Callable | None:
        """A typer command function for `polymodal <command>`, or None when the CLI has its own."""
        return None


def family_of(model) -> str:
    """The registered family name of a built model (`dual_encoder`, `fusion_encoder`, ...)."""
    spec = getattr(model, "build_spec", None)
    if isinstance(spec, dict) and "type" in spec:
        return spec["type"]
    return getattr(model, "family", type(model).__name__)


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of `cls` under `cls.name` (and its aliases).

    A duplicate name is an error, as in every registry.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a name")
    task = cls()
    TASKS.register(cls.name)(task)
    for alias in cls.aliases:
        if alias in _ALIASES and _ALIASES[alias] != cls.name:
            raise ValueError(f"task alias {alias!r} is taken by {_ALIASES[alias]!r}")
        _ALIASES[alias] = cls.name
    for listener in list(_LISTENERS):
        listener(task)
    return cls


def on_register(listener: Callable[[Task], None]) -> None:
    """Call `listener(task)` for every registered task, now and whenever one is registered."""
    _LISTENERS.append(listener)
    for name in TASKS.names():
        listener(TASKS.get(name))


def _builtins() -> None:
    import polymodal.tasks  # noqa: F401  (registers the built-in tasks)


def get_task(name: str) -> Task:
    """The registered task `name` (or one of its aliases); ConfigError naming the known ones."""
    _builtins()
    if isinstance(name, Task):
        return name
    name = _ALIASES.get(name, name)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; one of: {', '.join(task_names())}")
    return TASKS.get(name)


def task_names() -> list[str]:
    """Every registered task name."""
    _builtins()
    return TASKS.names()


def all_tasks() -> list[Task]:
    _builtins()
    return [TASKS.get(n) for n in TASKS.names()]


def evaluated_by_model() -> list[str]:
    """Tasks whose predictions a model can make (the others score prediction files only)."""
    return [t.name for t in all_tasks() if type(t).predict is not Task.predict]


def offered_methods(model, trained_for: str) -> tuple[str, ...]:
    """The LoadedModel methods a native model (nn.Module) trained for `trained_for` offers:
    those of every task that `offered_by(model, trained_for)` says it runs."""
    methods: list[str] = []
    for task in all_tasks():
        if task.offered_by(model, trained_for):
            methods += task.loaded_methods()
    return tuple(dict.fromkeys(methods))


def task_of_method(method: str) -> Task | None:
    """The registered task that brings LoadedModel method `method` through `Task.run`, if any."""
    for task in all_tasks():
        if method in task.loaded_methods() and type(task).run is not Task.run:
            return task
    return None


def batched(fn: Callable[[list, list], list], records: list[dict], batch_size: int) -> list:
    """`fn(images, records)` over `records` in chunks of `batch_size`; the outputs concatenated."""
    from polymodal.infer.inputs import chunks

    out: list = []
    for chunk in chunks(records, batch_size):
        out += fn([r["image"] for r in chunk], chunk)
    return out


def metric(spec: dict):
    """A registered metric (polymodal.eval.metrics) built for evaluation."""
    import polymodal.eval.metrics  # noqa: F401  (registers the metrics)
    from polymodal.registry import METRICS

    return METRICS.build(spec, "eval")
