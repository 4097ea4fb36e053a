"""Captioning: image in, caption out (CIDEr / BLEU / METEOR / ROUGE-L / SPICE, and CHAIR
hallucination rates when the records carry shapes-world scenes)."""
from __future__ import annotations

from polymodal.tasks.base import Task, batched, metric, register_task


def caption_field(lang: str) -> str:
    """The record field of the reference captions in `lang` ("en" or "zh")."""
    return "captions_zh" if lang == "zh" else "captions"


_SCORERS: dict = {}


def caption_scorer(lang: str):
    """The process's caption scorer for `lang`, made on first use and kept: its METEOR Java
    process (~10 s to start) then serves every evaluation of the process (a model and its
    shuffled baseline, each split of a demo) instead of starting anew each time. The process
    stops when the interpreter exits (`CaptionMetrics`)."""
    if lang not in _SCORERS:
        _SCORERS[lang] = metric({"type": "captioning", "lang": lang})
    return _SCORERS[lang]


@register_task
class Captioning(Task):
    name = "captioning"
    aliases = ("caption",)
    fields = ("image", ("caption", "captions"))
    shapes_file = "captions"
    collators = {"*": "caption"}            # any family: the caption is the decoder's target
    objectives = {"*": [{"type": "lm"}]}
    prediction_key = "caption"
    id_key = "image_id"                     # predictions are per image, as in COCO's result files
    method = "caption"
    command = "caption"
    kind = "captioner"
    generates = True

    def record_key(self, record):
        return record.get("image_id") or record["id"]

    def offered_by(self, model, trained_for):
        # A decoder over the image alone captions, whatever it was trained for.
        return getattr(model, "decoder", None) is not None and getattr(model, "text", None) is None

    def _first_per_image(self, records):
        first = {}
        for r in records:  # one caption per image
            first.setdefault(self.record_key(r), r)
        return first

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        first = self._first_per_image(records)
        caps = batched(lambda ims, _: model.caption(ims, **generation), list(first.values()), batch_size)
        return dict(zip(first, caps))

    def score(self, predictions, records, lang="en"):
        by_key = self._first_per_image(records)
        field = caption_field(lang)
        refs = {k: (r.get(field) or [r.get("caption")]) for k, r in by_key.items()}
        preds = {k: v for k, v in predictions.items() if k in refs}
        out = caption_scorer(lang)(predictions=preds, references={k: refs[k] for k in preds})
        scenes = {k: r["scene"] for k, r in by_key.items() if "scene" in r}
        if scenes and set(preds) <= set(scenes):
            chair = metric({"type": "shapes_chair"})(captions=preds, scenes={k: scenes[k] for k in preds}, lang=lang)
            out.update({k: v for k, v in chair.items() if k != "n"})
        return out
