"""(Multimodal) classification: image (+ a statement) -> class; zero-shot over label names for
models with a contrastive space (accuracy, macro-F1, AUROC for two classes)."""
from __future__ import annotations

from polymodal.tasks.base import Task, batched, metric, register_task


def classifier_labels(vocab, what: str) -> list[str]:
    """The vocabulary's tokens, refusing fewer than two (no classifier to train)."""
    from polymodal.errors import DataError

    if len(vocab) < 2:
        raise DataError(f"the training data has {len(vocab)} distinct {what}; a classifier needs at least two")
    return vocab.tokens


@register_task
class Classification(Task):
    name = "classification"
    aliases = ("classify",)
    fields = ("image", "label")
    shapes_file = "classify"
    collators = {"*": "classify"}
    objectives = {"*": [{"type": "classification"}]}
    prediction_key = "label"
    method = "classify"
    command = "classify"
    kind = "multimodal classifier"

    def labels(self, records, family):
        from polymodal.data.collate import label_vocab

        # Only a fusion encoder has a classifier whose rows are the data's labels.
        return classifier_labels(label_vocab(records), "labels") if family == "fusion_encoder" else None

    def offered_by(self, model, trained_for):
        zero_shot = getattr(model, "image_proj", None) is not None
        # A fusion classifier head holds class labels unless the model was trained for VQA answers.
        head = getattr(model, "classifier", None) is not None and trained_for != "vqa"
        return zero_shot or head

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        if all("text" in r for r in records):
            out = batched(lambda ims, ch: model.classify(ims, texts=[r["text"] for r in ch]), records, batch_size)
        else:  # zero-shot over the label set of the data
            labels = sorted({str(r["label"]) for r in records})
            out = batched(lambda ims, ch: model.classify(ims, labels), records, batch_size)
        return {r["id"]: o for r, o in zip(records, out)}

    def score(self, predictions, records, lang="en"):
        ids = [r["id"] for r in records if r["id"] in predictions]
        gold = {r["id"]: str(r["label"]) for r in records}
        labels = [_label(predictions[i]) for i in ids]
        kw = {}
        probs = [predictions[i].get("scores") if isinstance(predictions[i], dict) else None for i in ids]
        classes = sorted({gold[i] for i in ids})
        if len(classes) == 2 and all(p and classes[1] in p for p in probs):
            kw["scores"] = [p[classes[1]] for p in probs]  # P(positive class) for AUROC
        return metric({"type": "classification"})(references=[gold[i] for i in ids], predictions=labels, **kw)


def _label(p) -> str:
    return str(p["label"]) if isinstance(p, dict) else str(p)
