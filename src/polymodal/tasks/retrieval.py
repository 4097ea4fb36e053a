"""Image-text retrieval: embed both sides into one space (recall@K both ways, mean rank)."""
from __future__ import annotations

from polymodal.tasks.base import Task, metric, register_task
from polymodal.tasks.captioning import caption_field


@register_task
class Retrieval(Task):
    name = "retrieval"
    fields = ("image", ("caption", "captions"))
    shapes_file = "captions"
    collators = {"encoder_decoder": "caption", "*": "pretrain"}
    objectives = {"*": [{"type": "itc"}]}
    method = "retrieve"
    methods = ("embed_images", "embed_texts", "retrieve")
    command = "retrieve"
    kind = "image-text embedder"

    def offered_by(self, model, trained_for):
        return getattr(model, "image_proj", None) is not None   # any model with a contrastive space

    @staticmethod
    def sides(records, lang):
        """(images, texts, text_to_image): every caption of every record, in `lang`."""
        images, texts, t2i = [], [], []
        field = caption_field(lang)
        for i, r in enumerate(records):
            images.append(r["image"])
            for c in r.get(field) or [r["caption"]]:
                texts.append(c)
                t2i.append(i)
        return images, texts, t2i

    def predict(self, model, records, batch_size=32, lang="en", **generation):
        import numpy as np

        images, texts, text_to_image = self.sides(records, lang)
        img = np.concatenate([model.embed_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        txt = model.embed_texts(texts)
        return {"similarity": img @ txt.T, "text_to_image": text_to_image}

    def score(self, predictions, records, lang="en"):
        out = metric({"type": "retrieval"})(similarity=predictions["similarity"],
                                            text_to_image=predictions["text_to_image"])
        return {**out, **self.ceiling(records, lang)}

    def ceiling(self, records, lang="en"):
        """The expected recalls of an ideal model, when the records carry shapes-world scenes:
        `ceiling_i2t_r1`, ... (`polymodal.eval.shapes_metrics.retrieval_ceiling`); else {}.

        The captions are read in English; Chinese captions are the world's translations of the
        English ones (drawn in parallel), so a `zh` text fits the images its English original fits.
        """
        if not records or not all("scene" in r for r in records):
            return {}
        _, texts, text_to_image = self.sides(records, "en")
        if lang != "en" and self.sides(records, lang)[2] != text_to_image:
            return {}                            # no English original for every text
        return metric({"type": "shapes_retrieval_ceiling"})(texts=texts, text_to_image=text_to_image,
                                                             scenes=[r["scene"] for r in records])

    def shuffled(self, predictions, seed=0):
        import numpy as np

        sim = predictions["similarity"]
        perm = np.random.default_rng(seed).permutation(sim.shape[1])
        return {"similarity": sim[:, perm], "text_to_image": predictions["text_to_image"]}
