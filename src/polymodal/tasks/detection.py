"""Text-queried detection: every object a free-text phrase names ("blue triangles", "large
shapes") -> boxes with scores, none when nothing matches; scored by COCO AP (pycocotools'
COCOeval) at IoU 0.5 and 0.5:0.95, per phrase kind, and false positives per query where the
phrase matches nothing (polymodal.eval.detection).

Records: `text` (the phrase) and `boxes` (every box it names, pixels; [] for none), optionally
`phrase_kind`, or a referring expression's `ref` and `box` (the one-box case, kind "ref"); the shapes world writes them (`detect_{split}.jsonl`), and COCO instance
annotations read as such (`coco_instances:FILE.json`, the category name as the phrase). The
model is a `text_detector` (polymodal.models.detector), the same one that grounds referring
expressions (polymodal.tasks.grounding).
"""
from __future__ import annotations

from polymodal.tasks.base import Task, batched, metric, register_task
from polymodal.tasks.grounding import DETECTOR_OBJECTIVES

#: the lowest score a box needs to enter the AP computation (COCOeval keeps the best 100 per query)
EVAL_THRESHOLD = 0.01


@register_task
class Detection(Task):
    """Find every object a phrase names: {"image", "text", "boxes": [{"box", "score"}]}."""

    name = "detection"
    aliases = ("detect",)
    # a referring expression (`ref`, `box`) is the one-box case: both kinds of records train and score
    fields = ("image", ("text", "ref"), ("boxes", "box"))
    shapes_file = "detect"
    collators = {"text_detector": "detect"}
    objectives = DETECTOR_OBJECTIVES
    prediction_key = "boxes"
    method = "detect"
    command = "ground"
    kind = "text-queried detector"

    def offered_by(self, model, trained_for):
        return self.trains(model)   # every box-predicting model detects, whichever task it trained on

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        from polymodal.data.collate import query_text

        found = batched(lambda ims, ch: model.detect(ims, [query_text(r) for r in ch], threshold=EVAL_THRESHOLD),
                        records, batch_size)
        return {r["id"]: f for r, f in zip(records, found)}

    def score(self, predictions, records, lang="en"):
        from polymodal.data.collate import target_boxes

        refs = {r["id"]: list(target_boxes(r)) for r in records}
        kinds = {r["id"]: r.get("phrase_kind") or ("ref" if r.get("ref") is not None else None) for r in records}
        kinds = {k: v for k, v in kinds.items() if v}
        return metric({"type": "detection"})(predictions=predictions, references=refs, kinds=kinds or None)
