"""Pretraining on image-text pairs: ITC / ITM / MLM for encoders, LM for encoder-decoders.
No predictions or metrics of its own: a pretrained model is evaluated on the tasks it serves."""
from __future__ import annotations

from polymodal.tasks.base import Task, family_of, register_task


@register_task
class Pretraining(Task):
    name = "pretrain"
    fields = ("image", ("caption", "captions"))
    shapes_file = "captions"
    collators = {"encoder_decoder": "caption", "*": "pretrain"}
    objectives = {"encoder_decoder": [{"type": "lm"}], "dual_encoder": [{"type": "itc"}]}
    kind = "pretrained image-text model"

    def default_objectives(self, model):
        if family_of(model) in self.objectives:
            return super().default_objectives(model)
        # A fusion encoder pretrains with the heads it was built with (ALBEF: ITC + ITM + MLM).
        heads = (("image_proj", "itc"), ("itm_head", "itm"), ("mlm_head", "mlm"))
        objs = [{"type": objective} for head, objective in heads if getattr(model, head, None) is not None]
        return objs or [{"type": "classification"}]
