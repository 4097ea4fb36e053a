"""Image-text retrieval: embed both sides into one space (recall@K both ways, mean rank)."""
from __future__ import annotations

from polymodal.errors import ConfigError
from polymodal.tasks.base import Task, metric, register_task
from polymodal.tasks.captioning import caption_field

#: candidates per query a re-ranking model re-scores when not told (`--rerank-k`)
RERANK_K = 16


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

    def predict(self, model, records, batch_size=32, lang="en", rerank=None, rerank_k=RERANK_K, **generation):
        """The embeddings' similarity; with `rerank` (a loaded model, or a source for
        `polymodal.load`), also each direction's top `rerank_k` re-scored by it (`rerank_scores`)."""
        import numpy as np

        images, texts, text_to_image = self.sides(records, lang)
        img = np.concatenate([model.embed_images(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        txt = model.embed_texts(texts)
        out = {"similarity": img @ txt.T, "text_to_image": text_to_image}
        if rerank is not None:
            out.update(rerank_scores(rerank, images, texts, out["similarity"], rerank_k))
        return out

    def score(self, predictions, records, lang="en"):
        recall = metric({"type": "retrieval"})
        t2i = predictions["text_to_image"]
        out = recall(similarity=predictions["similarity"], text_to_image=t2i)
        if "t2i_similarity" in predictions:     # re-ranked: each direction from its own scores
            embedded = out
            by_t = recall(similarity=predictions["t2i_similarity"], text_to_image=t2i)
            by_i = recall(similarity=predictions["i2t_similarity"], text_to_image=t2i)
            out = {k: (by_i if k.startswith("i2t") else by_t if k.startswith("t2i") else embedded)[k] for k in embedded}
            recalls = [v for k, v in out.items() if k[:4] in ("i2t_", "t2i_") and k[5:].isdigit()]
            out["r_mean"] = float(sum(recalls) / len(recalls))
            out.update({f"embedding_{k}": v for k, v in embedded.items() if k[:4] in ("i2t_", "t2i_")})
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
        return {**{k: v[:, perm] for k, v in predictions.items() if k.endswith("similarity")},
                "text_to_image": predictions["text_to_image"]}


def rerank_scores(scorer, images, texts, similarity, k: int = RERANK_K) -> dict:
    """Re-rank retrieval candidates with a second model, as ALBEF and BLIP re-rank their ITC top-k
    with the ITM head: each text's `k` most similar images and each image's `k` most similar
    texts are scored by `scorer` (a loaded model or a source for `polymodal.load`): a captioner's
    mean per-token log-likelihood of the text given the image (`caption_logprob`), else an ITM
    head's match probability (`match`). Each pair is scored once, the pairs of one image together
    (a captioner encodes each image once per batch).

    Returns {"t2i_similarity", "i2t_similarity"}: (n_images, n_texts) scores in which every
    candidate ranks above every other text or image, in the scorer's order; the rest keep their
    order by `similarity`.
    """
    import numpy as np

    if isinstance(scorer, (str, bytes)) or hasattr(scorer, "__fspath__"):
        import polymodal

        scorer = polymodal.load(scorer)
    if getattr(scorer, "can_score_captions", lambda: False)():
        score = scorer.caption_logprob
    elif getattr(scorer, "can_match", lambda: False)():
        score = scorer.match
    else:
        raise ConfigError("rerank: the re-ranking model must be an encoder-decoder captioner (it scores a text "
                          "by its likelihood given the image) or have an image-text matching head (itm)")
    if int(k) < 1:
        raise ConfigError(f"rerank_k must be at least 1, got {k}")
    sim = np.asarray(similarity, dtype=np.float32)
    n_img, n_txt = sim.shape
    k_img, k_txt = min(int(k), n_img), min(int(k), n_txt)
    top_img = np.argpartition(-sim, k_img - 1, axis=0)[:k_img]           # (k, n_txt) image rows per text
    top_txt = np.argpartition(-sim, k_txt - 1, axis=1)[:, :k_txt]        # (n_img, k) text columns per image
    pairs = np.unique(np.concatenate([
        np.stack([top_img.ravel(), np.tile(np.arange(n_txt), k_img)], 1),
        np.stack([np.repeat(np.arange(n_img), k_txt), top_txt.ravel()], 1)]), axis=0)   # sorted by image
    values = np.asarray(score([images[i] for i in pairs[:, 0]], [texts[j] for j in pairs[:, 1]]), np.float32)
    scored = np.full(sim.shape, np.nan, np.float32)
    scored[pairs[:, 0], pairs[:, 1]] = values
    # candidates above the rest: every score is lifted past the largest similarity
    lift = np.float32(np.nanmax(np.abs(values)) + np.abs(sim).max() + 1.0) * 2
    out = {}
    for name, cand in (("t2i", (top_img, np.broadcast_to(np.arange(n_txt), top_img.shape))),
                       ("i2t", (np.broadcast_to(np.arange(n_img)[:, None], top_txt.shape), top_txt))):
        m = sim - lift
        m[cand] = scored[cand] + lift
        out[f"{name}_similarity"] = m
    return out
