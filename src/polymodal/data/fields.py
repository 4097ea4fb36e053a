"""The field names of a record, defined once, and the one check of a record's fields.

Every reader turns its format into plain dicts with these keys (docs/data.md describes them);
training, evaluation and the data tools read nothing else. A spec's `fields:` mapping renames
a user's keys to these. Which of them a task needs is the task's (`polymodal.tasks`, `Task.fields`).
`check_record` is what `polymodal data validate` reports; `task_problems` is what makes training
and evaluation skip a record.
"""
from __future__ import annotations

from typing import Any

#: Every field a record may carry, with what it holds.
FIELDS: dict[str, str] = {
    "id": "str, unique within the dataset (a question id, a caption-pair id, an image id)",
    "image": "the image: a path (str, resolved against the manifest's folder), bytes, or a PIL image",
    "image_id": "str, the image a record belongs to (several questions share one image)",
    "caption": "str, one caption (the first of `captions` when there are several)",
    "captions": "list[str], every reference caption of the image",
    "captions_zh": "list[str], Chinese captions, parallel to `captions`",
    "question": "str, a question about the image",
    "answers": "list[str], the reference answers (VQAv2: 10 per question)",
    "answer": "str, the single most common answer",
    "question_type": "str, the kind of question (shapes world: color, shape, count, exist, relation, size)",
    "answer_type": "str, VQAv2 answer type: yes/no, number or other",
    "text": "str, a text that goes with the image (multimodal classification)",
    "label": "str or int, the class of the image (+ text)",
    "source": "str, the sentence to translate",
    "target": "str, its translation",
    "ref": "str, a referring expression naming one object",
    "box": "[x0, y0, x1, y1], that object's box in pixels of the image",
    "boxes": "list of [x0, y0, x1, y1], every box (pixels) the record's `text` names (text-queried detection; "
             "[] when nothing matches)",
    "phrase_kind": "str, what a detection phrase names (shapes world: color, shape, color_shape, size_shape, none)",
    "scene": "dict, the shapes-world scene record (objects with shape, color, size, box, center)",
    "objects": "list[dict], every object of the image: {box: [x0, y0, x1, y1] pixels, attribute: value, ...}",
    "question_objects": "list[list[box]], per object phrase of the question (in order), the boxes it names",
    "split": "str, the split the record belongs to",
}

#: List fields whose empty value is a value (a detection phrase that matches nothing).
EMPTY_OK = ("boxes",)

#: Text fields that must be non-empty strings when present.
TEXT_FIELDS = ("caption", "question", "text", "source", "target", "ref", "answer")


def normalize_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived fields so every reader's records look alike (in place, returns rec).

    `answers` becomes a list and `answer` its first item when missing; `captions` a list and
    `caption` its first item; ids become strings.
    """
    if isinstance(rec.get("answers"), str):
        rec["answers"] = [rec["answers"]]
    if "answers" not in rec and isinstance(rec.get("answer"), str):
        rec["answers"] = [rec["answer"]]
    if isinstance(rec.get("captions"), str):
        rec["captions"] = [rec["captions"]]
    if "caption" not in rec and isinstance(rec.get("captions"), list) and rec["captions"]:
        rec["caption"] = rec["captions"][0]
    for key in ("id", "image_id"):
        if key in rec and isinstance(rec[key], int) and not isinstance(rec[key], bool):
            rec[key] = str(rec[key])
    return rec


def missing_fields(rec: dict[str, Any], fields: tuple) -> list[str]:
    """The `fields` that `rec` lacks, as readable names; a tuple inside means "one of these"
    (a task's `fields`, e.g. ("image", ("caption", "captions")))."""
    out = []
    for need in fields:
        names = need if isinstance(need, tuple) else (need,)
        # an empty `boxes` list is an answer ("nothing matches"), not a missing one
        if not any(rec.get(n) not in (None, "", []) or (n in EMPTY_OK and rec.get(n) == []) for n in names):
            out.append(" or ".join(names))
    return out


def check_record(rec: dict[str, Any], task=None) -> list[tuple[str, str]]:
    """Problems of one record, without touching its image: [(kind, message)].

    Kinds: "missing field", "empty text", "bad field".

    Args:
        task: also require the fields of this task (a `polymodal.tasks.Task`: its `name`, `fields`).
    """
    return [(kind, message) for _, kind, message in _problems(rec, task)]


def task_problems(rec: dict[str, Any], task) -> list[tuple[str, str]]:
    """The problems that keep `rec` from serving `task`: fields it lacks, and bad values in the
    fields the task reads (a bad field the task never reads is left to `polymodal data validate`)."""
    needed = {n for need in task.fields for n in (need if isinstance(need, tuple) else (need,))}
    return [(kind, message) for key, kind, message in _problems(rec, task) if key is None or key in needed]


def _problems(rec: dict[str, Any], task) -> list[tuple[str | None, str, str]]:
    """(the field, or None for a missing one; kind; message) for each problem of `rec`."""
    problems: list[tuple[str | None, str, str]] = []
    if task is not None:
        problems += [(None, "missing field", f"no {name} (needed for {task.name})")
                     for name in missing_fields(rec, task.fields)]
    for key in TEXT_FIELDS:
        if key in rec:
            v = rec[key]
            if not isinstance(v, str):
                problems.append((key, "bad field", f"{key} should be text, got {type(v).__name__}"))
            elif not v.strip():
                problems.append((key, "empty text", f"{key} is empty"))
    for key in ("captions", "captions_zh", "answers"):
        if key in rec:
            v = rec[key]
            if not isinstance(v, list) or not v:
                problems.append((key, "bad field", f"{key} should be a non-empty list of texts"))
            elif not all(isinstance(x, str) for x in v):
                problems.append((key, "bad field", f"{key} holds a non-text item"))
            elif not all(x.strip() for x in v):
                problems.append((key, "empty text", f"{key} holds an empty text"))
    if "label" in rec:
        v = rec["label"]
        if isinstance(v, bool) or not isinstance(v, (str, int)) or (isinstance(v, str) and not v.strip()):
            problems.append(("label", "bad field", f"label should be a class name or number, got {v!r}"))
    if "box" in rec:
        problems += [("box", "bad field", m) for m in _box_problem(rec["box"], "box")]
    if "boxes" in rec:
        v = rec["boxes"]
        if not isinstance(v, list):
            problems.append(("boxes", "bad field", f"boxes should be a list of [x0, y0, x1, y1], got {v!r}"))
        else:
            problems += [("boxes", "bad field", m) for i, b in enumerate(v) for m in _box_problem(b, f"boxes[{i}]")]
    if "image" in rec and not isinstance(rec["image"], (str, bytes, bytearray)) and not hasattr(rec["image"], "size"):
        problems.append(("image", "bad field", f"image should be a path, got {type(rec['image']).__name__}"))
    return problems


def _box_problem(b, name: str) -> list[str]:
    if (not isinstance(b, (list, tuple)) or len(b) != 4
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)):
        return [f"{name} should be [x0, y0, x1, y1] numbers, got {b!r}"]
    if not (0 <= b[0] < b[2] and 0 <= b[1] < b[3]):
        return [f"{name} {list(b)} is not x0 < x1, y0 < y1 with non-negative corners"]
    return []


def boxes_outside(rec: dict[str, Any], size: tuple[int, int]) -> list[str]:
    """The record's boxes (`box`, `boxes`) that reach beyond its width x height image (half a
    pixel of slack: boxes are [x0, x1) pixel ranges)."""
    boxes = ([("box", rec["box"])] if isinstance(rec.get("box"), (list, tuple)) else []) + \
        [(f"boxes[{i}]", b) for i, b in enumerate(rec.get("boxes") or []) if isinstance(b, (list, tuple))]
    w, h = size
    return [f"{name} {list(b)} lies outside the {w}x{h} image" for name, b in boxes
            if len(b) == 4 and all(isinstance(x, (int, float)) for x in b) and (b[2] > w + 0.5 or b[3] > h + 0.5)]
