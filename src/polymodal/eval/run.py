"""`polymodal eval`: run a model (or read predictions made elsewhere) over a dataset and score it.

One function per task turns records + a loaded model into predictions, and predictions +
records into metrics (the registered ones of polymodal.eval.metrics). The same functions
serve the CLI, the Python API and validation during training.

Prediction files (`--predictions PRED.jsonl`), one JSON object per line, keyed like the data:

| task           | keys of a line                         |
|----------------|----------------------------------------|
| captioning     | `id` (or `image`), `caption`           |
| vqa            | `question_id` (or `id`), `answer`      |
| classification | `id`, `label`                          |
| translation    | `id`, `translation`                    |
| grounding      | `id`, `box` [x0, y0, x1, y1]           |
"""
from __future__ import annotations

import logging
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from polymodal._jsonl import iter_jsonl
from polymodal.errors import DataError

log = logging.getLogger(__name__)

TASKS = ("captioning", "vqa", "retrieval", "classification", "translation", "grounding")
#: the value key of a prediction line, per task (the id key is `question_id` for vqa, else `id`)
PREDICTION_KEYS = {"captioning": "caption", "vqa": "answer", "classification": "label",
                   "translation": "translation", "grounding": "box"}


def _records(data, task: str, split: str | None, limit: int | None) -> list[dict]:
    from polymodal.data import open_dataset

    recs = list(open_dataset(data, split, task=task))  # a shapes-world dir reads the task's file
    if limit:
        recs = recs[:limit]
    if not recs:
        raise DataError(f"{data}: no records for split {split or '(default)'}")
    return recs


def _images(recs: list[dict], root_key: str = "image") -> list:
    return [r[root_key] for r in recs]


def _batched(fn: Callable[[list, list], list], recs: list[dict], batch_size: int) -> list:
    out: list = []
    for i in range(0, len(recs), batch_size):
        chunk = recs[i:i + batch_size]
        out += fn([r["image"] for r in chunk], chunk)
    return out


def _is_zh(texts: Sequence[str]) -> bool:
    return any(re.search(r"[\u4e00-\u9fff]", t) for t in texts[:50])


# ---------------------------------------------------------------------------------- tasks
def predict(model, task: str, recs: list[dict], batch_size: int = 32, lang: str = "en", **generation) -> dict:
    """Predictions {key: value} of `model` on `recs` for `task` (retrieval: a similarity matrix)."""
    if task == "captioning":
        first = {}
        for r in recs:  # one caption per image
            first.setdefault(r.get("image_id") or r["id"], r)
        keys = list(first)
        caps = _batched(lambda ims, _: model.caption(ims, **generation), list(first.values()), batch_size)
        return dict(zip(keys, caps))
    if task == "vqa":
        ans = _batched(lambda ims, ch: model.answer(ims, [r["question"] for r in ch], **generation), recs, batch_size)
        return {r["id"]: a for r, a in zip(recs, ans)}
    if task == "classification":
        if all("text" in r for r in recs):
            out = _batched(lambda ims, ch: model.classify(ims, texts=[r["text"] for r in ch]), recs, batch_size)
        else:  # zero-shot over the label set of the data
            labels = sorted({str(r["label"]) for r in recs})
            out = _batched(lambda ims, ch: model.classify(ims, labels), recs, batch_size)
        return {r["id"]: o for r, o in zip(recs, out)}
    if task == "translation":
        tr = _batched(lambda ims, ch: model.translate(ims, [r["source"] for r in ch], **generation), recs, batch_size)
        return {r["id"]: t for r, t in zip(recs, tr)}
    if task == "retrieval":
        import numpy as np

        images, texts, text_to_image = _retrieval_sides(recs, lang)
        img = np.concatenate([model.embed_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        txt = model.embed_texts(texts)
        return {"similarity": img @ txt.T, "text_to_image": text_to_image}
    raise DataError(f"task {task!r} cannot be predicted by a model here; score a predictions file instead "
                    f"(--predictions). Tasks with a model: captioning, vqa, classification, translation, retrieval")


def _retrieval_sides(recs, lang):
    images, texts, t2i = [], [], []
    field = "captions_zh" if lang == "zh" else "captions"
    for i, r in enumerate(recs):
        images.append(r["image"])
        for c in r.get(field) or [r["caption"]]:
            texts.append(c)
            t2i.append(i)
    return images, texts, t2i


def score(task: str, predictions: dict, recs: list[dict], lang: str = "en") -> dict[str, float]:
    """Metrics of `predictions` against the records' references."""
    import polymodal.eval.metrics  # noqa: F401  (registers the metrics)
    from polymodal.registry import METRICS

    if task == "captioning":
        by_key = {}
        for r in recs:
            by_key.setdefault(r.get("image_id") or r["id"], r)
        field = "captions_zh" if lang == "zh" else "captions"
        refs = {k: (r.get(field) or [r.get("caption")]) for k, r in by_key.items()}
        preds = {k: v for k, v in predictions.items() if k in refs}
        with METRICS.build({"type": "captioning", "lang": lang}, "eval") as m:
            out = m(predictions=preds, references={k: refs[k] for k in preds})
        scenes = {k: r["scene"] for k, r in by_key.items() if "scene" in r}
        if scenes and set(preds) <= set(scenes):
            chair = METRICS.build({"type": "shapes_chair"}, "eval")(
                captions=preds, scenes={k: scenes[k] for k in preds}, lang=lang)
            out.update({k: v for k, v in chair.items() if k != "n"})
        return out
    if task == "vqa":
        refs = {r["id"]: r["answers"] for r in recs}
        qt = {r["id"]: r["question_type"] for r in recs if "question_type" in r}
        at = {r["id"]: r["answer_type"] for r in recs if "answer_type" in r}
        preds = {k: v for k, v in predictions.items() if k in refs}
        return METRICS.build({"type": "vqa"}, "eval")(predictions=preds, references={k: refs[k] for k in preds},
                                                       question_types=qt or None, answer_types=at or None)
    if task == "classification":
        ids = [r["id"] for r in recs if r["id"] in predictions]
        gold = {r["id"]: str(r["label"]) for r in recs}
        labels = [_label(predictions[i]) for i in ids]
        kw = {}
        probs = [predictions[i].get("scores") if isinstance(predictions[i], dict) else None for i in ids]
        classes = sorted({gold[i] for i in ids})
        if len(classes) == 2 and all(p and classes[1] in p for p in probs):
            kw["scores"] = [p[classes[1]] for p in probs]  # P(positive class) for AUROC
        return METRICS.build({"type": "classification"}, "eval")(references=[gold[i] for i in ids],
                                                                  predictions=labels, **kw)
    if task == "translation":
        refs = {r["id"]: r["target"] for r in recs}
        ids = [i for i in refs if i in predictions]
        target_lang = "zh" if _is_zh([refs[i] for i in ids]) else "en"
        return METRICS.build({"type": "translation", "target_lang": target_lang}, "eval")(
            predictions=[predictions[i] for i in ids], references=[refs[i] for i in ids])
    if task == "retrieval":
        return METRICS.build({"type": "retrieval"}, "eval")(similarity=predictions["similarity"],
                                                             text_to_image=predictions["text_to_image"])
    if task == "grounding":
        refs = {r["id"]: r["box"] for r in recs}
        ids = [i for i in refs if i in predictions]
        return METRICS.build({"type": "grounding"}, "eval")(predictions=[predictions[i] for i in ids],
                                                             references=[refs[i] for i in ids])
    raise DataError(f"unknown task {task!r}; one of {', '.join(TASKS)}")


def _label(p) -> str:
    return str(p["label"]) if isinstance(p, dict) else str(p)


def shuffled(task: str, predictions: dict, seed: int = 0) -> dict:
    """The same predictions assigned to random other items: the baseline a real model must beat."""
    rnd = random.Random(seed)
    if task == "retrieval":
        import numpy as np

        sim = predictions["similarity"]
        perm = np.random.default_rng(seed).permutation(sim.shape[1])
        return {"similarity": sim[:, perm], "text_to_image": predictions["text_to_image"]}
    keys = list(predictions)
    values = [predictions[k] for k in keys]
    rnd.shuffle(values)
    return dict(zip(keys, values))


def read_predictions(path: str | Path, task: str) -> dict:
    """A predictions JSONL (see the module docs) as {key: value}."""
    value_key = PREDICTION_KEYS.get(task)
    if value_key is None:
        raise DataError(f"task {task!r} cannot be scored from a predictions file; run it with --model")
    out = {}
    for n, row in iter_jsonl(path, "predictions"):
        key = row.get("question_id", row.get("id", row.get("image")))
        if key is None or value_key not in row:
            raise DataError(f"{path}:{n}: a {task} prediction needs an id "
                            f"({'question_id' if task == 'vqa' else 'id'}) and {value_key!r}")
        out[str(key)] = row[value_key]
    return out


def evaluate(task: str, data, model: Any = None, predictions: str | Path | None = None, split: str | None = None,
             limit: int | None = None, batch_size: int = 32, lang: str = "en", baseline: bool = False,
             keep_predictions: bool = False, **generation) -> dict:
    """Evaluate `model` (a LoadedModel or a source for polymodal.load) or a predictions file.

    Args:
        task: one of TASKS.
        data: a dataset spec, or a shapes-world directory.
        model: the model to run; or `predictions`: a predictions JSONL to score.
        split: the data split. limit: score only the first N records.
        lang: "en" or "zh" (captioning references / retrieval texts).
        baseline: also score the predictions shuffled across items (the chance level).
        keep_predictions: add the predictions {key: value} under "predictions" (not for retrieval).
        generation: passed to the model's generation (num_beams, max_new_tokens, ...).

    Returns:
        {"task", "data", "split", "n", "metrics": {...}, ["baseline": {...}], "seconds"}
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if (model is None) == (predictions is None):
        raise DataError("give a model or a predictions file (exactly one)")
    recs = _records(data, task, split, limit)
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
        preds = predict(model, task, recs, batch_size=batch_size, lang=lang, **generation)
    seconds = time.perf_counter() - t0
    result = {"task": task, "data": str(data), "split": split, "n": len(recs),
              "metrics": score(task, preds, recs, lang=lang), "seconds": round(seconds, 3)}
    if baseline:
        result["baseline"] = score(task, shuffled(task, preds), recs, lang=lang)
    if keep_predictions and task != "retrieval":
        result["predictions"] = preds
    return result
