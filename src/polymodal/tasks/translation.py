"""Multimodal machine translation: a sentence and its image in, the translation out (BLEU, chrF)."""
from __future__ import annotations

import re
from typing import Sequence

from polymodal.tasks.base import Task, batched, metric, register_task


def is_zh(texts: Sequence[str]) -> bool:
    """Whether the texts are Chinese (CJK characters in the first 50)."""
    return any(re.search(r"[\u4e00-\u9fff]", t) for t in texts[:50])


@register_task
class Translation(Task):
    name = "translation"
    aliases = ("translate",)
    fields = ("source", "target")
    shapes_file = "translate"
    collators = {"*": "translate"}
    objectives = {"*": [{"type": "lm"}]}
    prediction_key = "translation"
    method = "translate"
    command = "translate"
    kind = "translator"
    generates = True

    def offered_by(self, model, trained_for):
        # A decoder conditioned on text translates unless it was trained to answer questions.
        conditioned = getattr(model, "decoder", None) is not None and getattr(model, "text", None) is not None
        return conditioned and trained_for != "vqa"

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        tr = batched(lambda ims, ch: model.translate(ims, [r["source"] for r in ch], **generation), records, batch_size)
        return {r["id"]: t for r, t in zip(records, tr)}

    def score(self, predictions, records, lang="en"):
        refs = {r["id"]: r["target"] for r in records}
        ids = [i for i in refs if i in predictions]
        target_lang = "zh" if is_zh([refs[i] for i in ids]) else "en"
        return metric({"type": "translation", "target_lang": target_lang})(
            predictions=[predictions[i] for i in ids], references=[refs[i] for i in ids])
