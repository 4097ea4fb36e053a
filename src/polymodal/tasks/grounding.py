"""Grounding: localise the object a referring expression names ("the small red circle") -> one
box and a confidence; scored by accuracy at IoU >= 0.5 and mean IoU, beside two baselines that
know every object of the image but not the text ("largest object", "random object").

A `text_detector` (polymodal.models.detector) grounds: the box of its best-scoring image token
(`LoadedModel.ground`, polymodal.infer.native). The same model detects every object a phrase
names (polymodal.tasks.detection); both train on the `detect` collator (a referring expression
is the one-box case) and the `set_matching` objective. `polymodal ground` runs either (one best
box, or every box above `--threshold`) and draws them.
"""
from __future__ import annotations

import random

from polymodal.tasks.base import Task, batched, metric, register_task

#: the model families that predict boxes, with their default objectives
DETECTOR_OBJECTIVES = {"text_detector": [{"type": "set_matching"}]}


@register_task
class Grounding(Task):
    """Localise the object a referring expression names: {"image", "text", "boxes"}."""

    name = "grounding"
    aliases = ("ground",)
    fields = ("image", "ref", "box")
    shapes_file = "ground"
    collators = {"text_detector": "detect"}
    objectives = DETECTOR_OBJECTIVES
    prediction_key = "box"
    method = "ground"
    command = "ground"
    kind = "text-queried detector"

    def offered_by(self, model, trained_for):
        return self.trains(model)   # every box-predicting model grounds, whichever task it trained on

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        out = batched(lambda ims, ch: model.ground(ims, [r["ref"] for r in ch]), records, batch_size)
        return {r["id"]: o["box"] for r, o in zip(records, out)}

    def score(self, predictions, records, lang="en"):
        refs = {r["id"]: r["box"] for r in records}
        ids = [i for i in refs if i in predictions]
        out = metric({"type": "grounding"})(predictions=[predictions[i] for i in ids],
                                            references=[refs[i] for i in ids])
        return {**out, **self.baselines([r for r in records if r["id"] in predictions])}

    def baselines(self, records: list[dict]) -> dict[str, float]:
        """Accuracy of answering with the largest object of the image, and with a random one (seed 0),
        on the records that list their image's `objects` (the shapes world writes them); {} if none do."""
        with_objects = [r for r in records if r.get("objects")]
        if not with_objects:
            return {}
        rnd = random.Random(0)
        refs = [r["box"] for r in with_objects]
        largest = [max(r["objects"], key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))["box"]
                   for r in with_objects]
        chance = [rnd.choice(r["objects"])["box"] for r in with_objects]
        out = {}
        for name, boxes in (("largest_object", largest), ("random_object", chance)):
            m = metric({"type": "grounding"})(predictions=boxes, references=refs)
            out[f"{name}/accuracy@0.5"], out[f"{name}/mean_iou"] = m["accuracy@0.5"], m["mean_iou"]
        return out
