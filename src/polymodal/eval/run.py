"""`polymodal eval`: run a model (or read predictions made elsewhere) over a dataset and score it.

The task (`polymodal.tasks`) turns records + a loaded model into predictions (`Task.predict`)
and predictions + records into metrics (`Task.score`, with the registered metrics of
polymodal.eval.metrics). The same functions serve the CLI and the Python API; validation during
training averages the objectives' values instead (`polymodal.train.trainer.evaluate_objectives`).

Prediction files (`--predictions FILE`, `--save-predictions FILE`) hold one object per
prediction, keyed like the data (each task's `id_key` and `prediction_key`), either as JSON Lines
(one object per line) or as one JSON array of the objects -- the official result-file format of
the COCO caption evaluation (`[{"image_id": 42, "caption": "..."}]`) and of the VQA evaluation
(`[{"question_id": 42000, "answer": "2"}]`). Reading, the content decides (a first non-space "["
is an array); writing, the file name does (".json": an array with integer ids where the ids are
integers, as the official tools want; anything else: JSON Lines).

| task           | keys of an object                      |
|----------------|----------------------------------------|
| captioning     | `image_id` (or `id`), `caption`        |
| vqa            | `question_id` (or `id`), `answer`      |
| classification | `id`, `label`                          |
| translation    | `id`, `translation`                    |
| grounding      | `id`, `box` [x0, y0, x1, y1]           |
| detection      | `id`, `boxes` [{"box", "score"}, …]    |
"""
from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from polymodal.jsonl import iter_json_objects
from polymodal.errors import ConfigError, DataError
from polymodal.tasks import Task, get_task
from polymodal.tasks.retrieval import RERANK_K

log = logging.getLogger(__name__)


def _records(data, task: Task, split: str | None, limit: int | None, check_images: bool):
    """The records to score (the first `limit`), and the `Skips` of those left out: unreadable
    records, records lacking what the task needs and, when a model runs (`check_images`),
    records whose image cannot be read. Each image is decoded once to check it, however many
    records share it; the model reads it again later, a batch at a time."""
    from polymodal.data import open_dataset
    from polymodal.data.dataset import BadRecord, Skips, checked_image, checked_record
    from polymodal.data.fields import boxes_outside

    reader = open_dataset(data, split, shapes_file=task.shapes_file)  # a shapes dir: the task's file
    recs, skips, readable = [], Skips(), {}                      # readable: image path -> (width, height)
    for e in reader.entries():
        if limit and len(recs) >= limit:
            break
        try:
            rec = checked_record(e, task)
            image = rec.get("image")
            if check_images and image is not None:
                size = readable.get(image) if isinstance(image, str) else None
                if size is None:
                    size = checked_image(image, e).size
                    if isinstance(image, str):
                        readable[image] = size
                outside = boxes_outside(rec, size)
                if outside:
                    raise BadRecord("box outside image", f"{e.where}: " + "; ".join(outside))
            recs.append(rec)
        except BadRecord as exc:
            skips.add(exc.kind, str(exc))
    if not recs:
        raise DataError(f"{data}: no usable records for split {split or '(default)'}"
                        + (f"; {skips.summary()}" if skips.count else ""))
    if skips.count:
        log.warning("%s", skips.summary())
    return recs, skips


def _task(task: str | Task) -> Task:
    from polymodal.errors import ConfigError

    try:
        return get_task(task)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def predict(model, task: str | Task, recs: list[dict], batch_size: int = 32, lang: str = "en", **generation) -> dict:
    """Predictions {key: value} of `model` on `recs` for `task` (retrieval: a similarity matrix)."""
    return _task(task).predict(model, recs, batch_size=batch_size, lang=lang, **generation)


def score(task: str | Task, predictions: dict, recs: list[dict], lang: str = "en") -> dict[str, float]:
    """Metrics of `predictions` against the records' references."""
    return _task(task).score(predictions, recs, lang=lang)


def shuffled(task: str | Task, predictions: dict, seed: int = 0) -> dict:
    """The same predictions assigned to random other items: the baseline a real model must beat."""
    return _task(task).shuffled(predictions, seed)


def read_predictions(path: str | Path, task: str | Task) -> dict:
    """A predictions file, JSON Lines or a JSON array (see the module docs), as {key: value}."""
    task = _task(task)
    value_key = task.prediction_key
    if value_key is None:
        raise DataError(f"task {task.name!r} cannot be scored from a predictions file; run it with --model")
    id_keys = list(dict.fromkeys((task.id_key, "id", "image")))
    out = {}
    for where, row in iter_json_objects(path, "predictions"):
        key = next((row[k] for k in id_keys if row.get(k) is not None), None)
        if key is None or value_key not in row:
            raise DataError(_incomplete(where, task, row, id_keys, has_id=key is not None))
        out[str(key)] = row[value_key]
    return out


def _incomplete(where: str, task: Task, row: dict, id_keys: list[str], has_id: bool) -> str:
    """What a prediction without an id or a value lacks, and how to write it."""
    missing = [] if has_id else [f"an id ({', '.join(map(repr, id_keys[:-1]))} or {id_keys[-1]!r})"]
    if task.prediction_key not in row:
        missing.append(repr(task.prediction_key))
    return (f"{where}: this {task.name} prediction lacks {' and '.join(missing)} (its keys: {sorted(row)}); "
            f'write each prediction as {{"{task.id_key}": ..., "{task.prediction_key}": ...}}')


def write_predictions(path: str | Path, task: str | Task, predictions: dict) -> None:
    """Write {key: value} as a predictions file that `read_predictions` reads back: a JSON array
    (the official result-file format) when `path` ends in ".json", else JSON Lines."""
    import json

    task = _task(task)
    if Path(path).suffix.lower() == ".json":
        rows = [{task.id_key: _official_id(k), task.prediction_key: v} for k, v in predictions.items()]
        Path(path).write_text(json.dumps(rows, ensure_ascii=False))
        return
    with open(path, "w") as f:
        for k, v in predictions.items():
            f.write(json.dumps({task.id_key: k, task.prediction_key: v}, ensure_ascii=False) + "\n")


def _official_id(key: str) -> int | str:
    """"42" -> 42 (COCO image ids and VQA question ids are integers); other keys stay strings."""
    return int(key) if isinstance(key, str) and re.fullmatch(r"0|[1-9][0-9]*", key) else key


def evaluate(task: str | Task, data, model: Any = None, predictions: str | Path | None = None,
             split: str | None = None, limit: int | None = None, batch_size: int = 32, lang: str = "en",
             baseline: bool = False, keep_predictions: bool = False, ceiling: bool = False,
             **generation) -> dict:
    """Evaluate `model` (a LoadedModel or a source for polymodal.load) or a predictions file.

    Args:
        task: a registered task (polymodal.tasks) or its name.
        data: a dataset spec, or a shapes-world directory.
        model: the model to run; or `predictions`: a predictions file to score (JSON Lines or a
            JSON array, see the module docs).
        split: the data split. limit: score only the first N records.
        lang: "en" or "zh" (captioning references / retrieval texts).
        baseline: also score the predictions shuffled across items (the chance level) and,
            where the task has one (VQA), an image-blind baseline learnt from the data's train
            split (`Task.blind`: the question-only prior), under "blind".
        keep_predictions: add the predictions {key: value} under "predictions" (tasks with a
            prediction file only; not retrieval).
        ceiling: score no model but the data's ceiling, what an ideal model would score
            (`Task.ceiling`: retrieval on shapes-world records); a model's scores include it anyway.
        generation: passed to the model's generation (num_beams, max_new_tokens, ...); for
            retrieval, `rerank` (a model) and `rerank_k` re-rank each query's top candidates
            (`polymodal.tasks.retrieval.rerank_scores`).

    Returns:
        {"task", "data", "split", "n", "metrics": {...}, ["skipped": {"count", "summary"}],
         ["baseline": {...}], ["blind": {...}], "seconds"}; `n` counts the records scored: bad ones (unreadable, a
        field missing, an unreadable image) are skipped, counted and logged, never fatal.
    """
    task = _task(task)
    if ceiling:
        if model is not None or predictions is not None:
            raise DataError("the ceiling scores no model: drop the model and the predictions file "
                            "(a model's scores report the ceiling beside its own where the data give one)")
        return _ceiling(task, data, split, limit, lang)
    if (model is None) == (predictions is None):
        raise DataError("give a model or a predictions file (exactly one)")
    recs, skips = _records(data, task, split, limit, check_images=model is not None)
    t0 = time.perf_counter()
    if predictions is not None:
        preds = read_predictions(predictions, task)
        known = {str(r.get("image_id") or r["id"]) for r in recs} | {str(r["id"]) for r in recs}
        unknown = [k for k in preds if k not in known]
        if unknown:
            raise DataError(f"{predictions}: {len(unknown)} predictions match no record of the data "
                            f"(e.g. {unknown[:3]}); check the ids and the split")
    else:
        if isinstance(model, (str, Path)):
            import polymodal

            model = polymodal.load(model)
        preds = task.predict(model, recs, batch_size=batch_size, lang=lang, **generation)
    seconds = time.perf_counter() - t0
    result = {"task": task.name, "data": str(data), "split": split, "n": len(recs),
              "metrics": task.score(preds, recs, lang=lang), "seconds": round(seconds, 3)}
    if generation.get("rerank") is not None:
        result["rerank"] = {"model": str(generation["rerank"]), "k": generation.get("rerank_k", RERANK_K)}
    if skips.count:
        result["skipped"] = {"count": skips.count, "summary": skips.summary()}
    if baseline:
        result["baseline"] = task.score(task.shuffled(preds), recs, lang=lang)
        blind = _blind(task, data, split, recs)
        if blind is not None:
            result["blind"] = task.score(blind, recs, lang=lang)
    if keep_predictions and task.prediction_key is not None:
        result["predictions"] = preds
    return result


def _blind(task: Task, data, split: str | None, recs: list[dict]) -> dict | None:
    """The task's image-blind baseline (`Task.blind`), learnt from the data's train split (minus any
    record being scored); None when the task has none, or when no train records remain."""
    if split == "train" or type(task).blind is Task.blind:
        return None
    try:
        train, _ = _records(data, task, "train", None, check_images=False)
    except (DataError, ConfigError, OSError) as e:   # no train split to learn the priors from
        log.info("no question-only baseline: %s", e)
        return None
    scored = {str(r["id"]) for r in recs}
    train = [r for r in train if str(r["id"]) not in scored]   # data without splits: never learn from the scored
    if not train:
        log.info("no question-only baseline: %s has no train records apart from those scored", data)
        return None
    return task.blind(recs, train)


def _ceiling(task: Task, data, split: str | None, limit: int | None, lang: str) -> dict:
    """`evaluate(..., ceiling=True)`: the task's ceiling on the records, in evaluate's layout."""
    recs, _ = _records(data, task, split, limit, check_images=False)
    t0 = time.perf_counter()
    metrics = task.ceiling(recs, lang=lang)
    if not metrics:
        raise DataError(f"task {task.name!r} has no known ceiling on {data}; retrieval on shapes-world "
                        f"records (with their scenes) has one")
    return {"task": task.name, "data": str(data), "split": split, "n": len(recs), "metrics": metrics,
            "seconds": round(time.perf_counter() - t0, 3)}


def finite(obj):
    """NaN/inf -> None, recursively, so the JSON we write is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
