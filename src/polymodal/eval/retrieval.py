"""Image-text retrieval: Recall@K both ways, mean and median rank, from a similarity matrix.

The usual protocol (COCO / Flickr30k retrieval, as in CLIP, ALBEF, BLIP): each text belongs to
one image, an image may own several texts (COCO has 5). Image -> text: the rank of the image's
best-ranked own text among all texts. Text -> image: the rank of its image among all images.

Ties count against the model: a candidate that scores exactly as high as the right one is
ranked before it, so a constant similarity matrix gets R@1 = 0, never a lucky 1. Recalls are
fractions in [0, 1]; ranks are 1-based.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from polymodal.errors import ConfigError, DataError
from polymodal.eval._common import Metric, as_numpy
from polymodal.registry import METRICS

logger = logging.getLogger(__name__)

# Rows (or columns) per block, so that the (block x n) comparison stays a few hundred MB at most
# even for 5k images x 25k texts.
_BLOCK = 1024


def retrieval_ranks(similarity: Any, text_to_image: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the right answer, per image (image -> text) and per text (text -> image).

    Args:
        similarity: (n_images, n_texts) scores, higher = more similar (numpy, list or torch).
        text_to_image: (n_texts,) index of each text's image.
    Returns:
        (i2t_ranks over the images that own at least one text, t2i_ranks (n_texts,)).
    """
    sim = as_numpy(similarity, "retrieval: similarity", dtype=np.float32)
    if sim.ndim != 2:
        raise DataError(f"retrieval: similarity must be (n_images, n_texts), got shape {sim.shape}")
    n_img, n_txt = sim.shape
    gt = as_numpy(text_to_image, "retrieval: text_to_image", dtype=np.int64)
    if gt.shape != (n_txt,):
        raise DataError(f"retrieval: text_to_image must give one image index per text ({n_txt}), "
                        f"got shape {gt.shape}")
    if n_txt == 0 or gt.min() < 0 or gt.max() >= n_img:
        raise DataError(f"retrieval: text_to_image must hold image indices in [0, {n_img}), "
                        f"got range [{gt.min() if n_txt else '-'}, {gt.max() if n_txt else '-'}]")

    # Text -> image: rank = 1 + #other images scoring >= the right one.
    t2i = np.empty(n_txt, dtype=np.int64)
    for s in range(0, n_txt, _BLOCK):
        block = sim[:, s:s + _BLOCK]                                   # (n_img, b)
        right = block[gt[s:s + _BLOCK], np.arange(block.shape[1])]     # (b,)
        t2i[s:s + _BLOCK] = (block >= right[None, :]).sum(0)           # counts the right one itself

    # Image -> text: the best own text's score; rank = 1 + #other images' texts scoring >= it.
    owns = np.bincount(gt, minlength=n_img) > 0
    if not owns.all():
        logger.warning("retrieval: %d image(s) own no text and are left out of image->text",
                       int((~owns).sum()))
    i2t = np.empty(n_img, dtype=np.int64)
    for s in range(0, n_img, _BLOCK):
        block = sim[s:s + _BLOCK]                                      # (b, n_txt)
        own = gt[None, :] == np.arange(s, s + block.shape[0])[:, None]  # (b, n_txt) bool
        best = np.where(own, block, -np.inf).max(1)                    # (b,)
        i2t[s:s + _BLOCK] = 1 + (np.where(own, -np.inf, block) >= best[:, None]).sum(1)
    return i2t[owns], t2i


def retrieval_metrics(similarity: Any, text_to_image: Sequence[int],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (image->text "i2t", text->image "t2i"), mean/median rank, and their mean recall.

    Args:
        similarity: (n_images, n_texts) scores, higher = more similar.
        text_to_image: (n_texts,) index of each text's image.
        ks: the K of Recall@K.
    Returns:
        {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", ..., "i2t_mean_rank", "i2t_median_rank",
         "t2i_mean_rank", "t2i_median_rank", "r_mean", "n_images", "n_texts"}.
    """
    i2t, t2i = retrieval_ranks(similarity, text_to_image)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = float((ranks <= k).mean())
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = float(ranks.mean())
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    out["n_images"] = float(len(i2t))
    out["n_texts"] = float(len(t2i))
    return out


def ideal_recalls(fits: Any, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K of an ideal model: the retrieval ceiling when captions fit several images.

    The ideal model scores every candidate that fits the query equally and above every other one,
    and breaks the ties in random order; these are its expected recalls under the protocol of
    `retrieval_ranks` (which itself counts ties against the model). With m candidates tied at the top:

    - text -> image: the right image is among the m; P(it lands in the top K) = min(1, K / m);
    - image -> text: o of the m are the image's own texts; P(one of them lands in the top K)
      = 1 - C(m - o, K) / C(m, K) (1 when K >= m - o + 1).

    A text always fits its own image (set here, whatever `fits` says), so the ceiling is never
    below what the data's own pairing allows.

    Args:
        fits: (n_images, n_texts) bool, whether each text is true of each image.
        text_to_image: (n_texts,) index of each text's image.
        ks: the K of Recall@K.
    Returns:
        {"ceiling_i2t_r1", ..., "ceiling_t2i_r1", ..., "ceiling_r_mean"} (fractions in [0, 1]).
    """
    fits = np.array(as_numpy(fits, "retrieval ceiling: fits", dtype=bool))
    gt = as_numpy(text_to_image, "retrieval ceiling: text_to_image", dtype=np.int64)
    n_img, n_txt = fits.shape if fits.ndim == 2 else (0, 0)
    if fits.ndim != 2 or gt.shape != (n_txt,) or n_txt == 0 or gt.min() < 0 or gt.max() >= n_img:
        raise DataError(f"retrieval ceiling: fits must be (n_images, n_texts) and text_to_image hold one "
                        f"image index per text; got shapes {fits.shape} and {gt.shape}")
    fits[gt, np.arange(n_txt)] = True
    own = np.zeros_like(fits)
    own[gt, np.arange(n_txt)] = True
    owners = own.any(1)
    m_t2i = fits.sum(0)                                  # (n_txt,) images each text fits
    m_i2t = fits[owners].sum(1)                          # (n_owners,) texts that fit each image
    o_i2t = own[owners].sum(1)                           # (n_owners,) of which its own
    out: dict[str, float] = {}
    for k in ks:
        # P(no own text in the top K) = prod_{t<K} (m - o - t) / (m - t); 0 once K > m - o
        miss = np.ones(len(m_i2t))
        for t in range(k):
            miss *= np.clip(m_i2t - o_i2t - t, 0, None) / np.maximum(m_i2t - t, 1)
        out[f"ceiling_i2t_r{k}"] = float((1 - miss).mean())
    for k in ks:
        out[f"ceiling_t2i_r{k}"] = float(np.minimum(1.0, k / m_t2i).mean())
    out["ceiling_r_mean"] = float(np.mean([out[f"ceiling_{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out


def recall_ks(ks: Sequence[int], metric: str) -> tuple[int, ...]:
    """The K of Recall@K of a metric's config, checked: positive integers."""
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"{metric}.ks: expected positive integers, got {ks!r}")
    return tuple(ks)


@METRICS.register("retrieval")
class RetrievalMetrics(Metric):
    """Recall@K both ways and ranks (see `retrieval_metrics`).

    Args:
        ks: the K of Recall@K.
    """

    main = "r_mean"

    def __init__(self, ks: list[int] = (1, 5, 10)):
        self.ks = recall_ks(ks, "retrieval")

    def __call__(self, similarity: Any, text_to_image: Sequence[int]) -> dict[str, float]:
        return retrieval_metrics(similarity, text_to_image, ks=self.ks)
