"""Grounding: localise the object a referring expression names (accuracy at IoU >= 0.5, mean
IoU). Scored from prediction files; no model family predicts boxes yet."""
from __future__ import annotations

from polymodal.tasks.base import Task, metric, register_task


@register_task
class Grounding(Task):
    name = "grounding"
    aliases = ("ground",)
    fields = ("image", "ref", "box")
    shapes_file = "ground"
    prediction_key = "box"

    def score(self, predictions, records, lang="en"):
        refs = {r["id"]: r["box"] for r in records}
        ids = [i for i in refs if i in predictions]
        return metric({"type": "grounding"})(predictions=[predictions[i] for i in ids],
                                             references=[refs[i] for i in ids])
