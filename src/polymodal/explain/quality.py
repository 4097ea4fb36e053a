"""How good an explanation method is, measured on data with exact object boxes (the shapes world).

* `pointing_game`: for questions (`vqa` records) and referring expressions (`ground` records)
  that name exactly one object, the share of maps whose maximum (`Explanation.peak`) falls
  inside that object's box (Zhang et al. 2016, "Top-down Neural Attention by Excitation
  Backprop", without their 15-pixel tolerance),
  per method and per question type, next to two baselines that look at no model: the image's
  centre and a uniformly random pixel.
* `deletion_curve`: VQA accuracy as the cells of the token grid are painted over with the
  image's background colour, most relevant first (by a method's map) or in random order
  (Petsiuk et al. 2018, "RISE"); a faithful map makes accuracy fall sooner, so its area under
  the curve is smaller than the random order's.
"""
from __future__ import annotations

import logging
import random
from typing import Sequence

import numpy as np

from polymodal.errors import DataError

log = logging.getLogger(__name__)

#: what each record file explains: its text field, and the box(es) of the one object it names
SOURCES = ("vqa", "ground")


def _named_box(rec: dict, source: str):
    """The box [x0, y0, x1, y1) of the one object a record names, or None (none or several)."""
    if source == "ground":
        return rec.get("box")
    phrases = rec.get("question_objects") or []
    if len(phrases) == 1 and len(phrases[0]) == 1:
        return phrases[0][0]
    return None


def _records(data, split: str, source: str, limit: int | None, types: Sequence[str] | None) -> list[dict]:
    from polymodal.data import open_dataset

    if source not in SOURCES:
        raise DataError(f"pointing game source {source!r}: one of {', '.join(SOURCES)}")
    out = []
    for rec in open_dataset(data, split, shapes_file=source):
        box = _named_box(rec, source)
        if box is None or (types and rec.get("question_type") not in types):
            continue
        out.append({**rec, "_box": box, "_text": rec["ref"] if source == "ground" else rec["question"]})
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{data} ({source}_{split}): no records that name exactly one object with a box "
                        "(shapes-world `question_objects` / `box`); generate a shapes world with "
                        "`polymodal data generate shapes`")
    return out


def _inside(point: tuple[int, int], box) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def _rate(hits: dict[str, list[bool]]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in sorted(hits.items()) if v}


def _answered(rec: dict, answer: str | None) -> list[str]:
    """["answer=right"] or ["answer=wrong"] for a question the model answered; [] otherwise."""
    if answer is None or not rec.get("answers"):
        return []
    right = answer.strip().lower() in {str(a).strip().lower() for a in rec["answers"]}
    return ["answer=right" if right else "answer=wrong"]


def pointing_game(model, data, split: str = "test", source: str = "vqa", methods: Sequence[str] | None = None,
                  limit: int | None = None, types: Sequence[str] | None = None, batch_size: int = 64,
                  target: str | None = None, seed: int = 0) -> dict:
    """The pointing game of `model`'s explanation methods on a shapes world.

    Args:
        model: a loaded model (or a source for polymodal.load).
        data: a shapes-world directory (records with `question_objects` or `box`).
        split: its split. source: "vqa" (questions) or "ground" (referring expressions).
        methods: the methods to score (default: every method the model offers).
        limit: the first N usable records. types: only these question types (vqa).
        target: the fusion encoders' target ("answer", "itm", "itc"; default: the model's first).
        seed: of the random baseline.

    Returns:
        {"n", "source", "split", "methods": {method: {"all": rate, "question_type=...": rate,
         "answer=right" / "answer=wrong": rate on the questions the model answered right / wrong}},
         "counts": {group: records}, "centre": {...}, "random": {...}, "random_expected": {...}}: the
        answer groups' counts are the last method's (the same for every method); the random baseline drawn
        once per record, and its expectation (the box's share of the image).
    """
    import polymodal
    from polymodal.explain import methods_of
    from polymodal.infer.inputs import chunks

    if isinstance(model, str):
        model = polymodal.load(model)
    recs = _records(data, split, source, limit, types)
    methods = list(methods or methods_of(model, target))
    rng = random.Random(seed)

    def groups(r):
        return ["all"] + ([f"question_type={r['question_type']}"] if "question_type" in r else [])

    centre, rand, expected = {}, {}, {}
    sizes = {}
    for r in recs:
        from PIL import Image

        with Image.open(r["image"]) as im:
            W, H = im.size
        sizes[r["id"]] = (H, W)
        x0, y0, x1, y1 = r["_box"]
        for g in groups(r):
            centre.setdefault(g, []).append(_inside((W // 2, H // 2), r["_box"]))
            rand.setdefault(g, []).append(_inside((rng.randrange(W), rng.randrange(H)), r["_box"]))
            expected.setdefault(g, []).append(max(0, x1 - x0) * max(0, y1 - y0) / (W * H))
    scores, counts = {}, {}
    for method in methods:
        hits: dict[str, list[bool]] = {}
        for chunk in chunks(recs, batch_size):
            exs = model.explain([r["image"] for r in chunk], [r["_text"] for r in chunk], method=method, target=target)
            for r, ex in zip(chunk, exs):
                hit = _inside(ex.peak(), r["_box"])
                for g in groups(r) + _answered(r, ex.answer):
                    hits.setdefault(g, []).append(hit)
        scores[method] = _rate(hits)
        counts = {k: len(v) for k, v in sorted(hits.items())}
        log.info("pointing game %s: %s", method, scores[method].get("all"))
    return {"source": source, "split": split, "n": len(recs), "methods": scores, "counts": counts, "centre": _rate(centre),
            "random": _rate(rand), "random_expected": _rate(expected)}


def _background(img: np.ndarray) -> np.ndarray:
    """The median colour of an image (H, W, 3): in the shapes world, where objects cover a small
    part of a noisy plain background, the background's colour."""
    return np.median(img.reshape(-1, img.shape[-1]), axis=0).astype(img.dtype)


def _masked(img: np.ndarray, cells: Sequence[int], grid: tuple[int, int], fill: np.ndarray) -> np.ndarray:
    """`img` with the grid cells `cells` (row-major indices of an h x w grid) painted `fill`."""
    out = img.copy()
    H, W = img.shape[:2]
    h, w = grid
    for c in cells:
        r, k = divmod(int(c), w)
        out[r * H // h:(r + 1) * H // h, k * W // w:(k + 1) * W // w] = fill
    return out


def deletion_curve(model, data, split: str = "test", method: str | None = None, steps: int = 8,
                   limit: int | None = 500, types: Sequence[str] | None = None, batch_size: int = 64,
                   seed: int = 0) -> dict:
    """VQA accuracy as the most relevant grid cells are deleted first, against a random order.

    Args:
        model: a loaded VQA model (or a source for polymodal.load).
        data, split: a VQA dataset (a shapes-world directory or any VQA spec).
        method: the explanation method ranking the cells (default: the model's default).
        steps: points of the curve after 0 (fractions 0, 1/steps, ..., 1 of the cells).
        limit: the first N questions. types: only these question types.
        seed: of the random order.

    Returns:
        {"n", "method", "fractions", "relevant": [accuracy], "random": [accuracy],
         "auc_relevant", "auc_random"}: areas by the trapezoid rule over fractions 0..1.
    """
    import polymodal
    from polymodal.data import open_dataset
    from polymodal.data.images import load_image
    from polymodal.infer.inputs import chunks
    from polymodal.tasks import get_task

    if isinstance(model, str):
        model = polymodal.load(model)
    recs = [r for r in open_dataset(data, split, shapes_file="vqa") if not types or r.get("question_type") in types]
    recs = recs[:limit] if limit else recs
    if not recs:
        raise DataError(f"{data} (vqa, split {split}): no questions" + (f" of types {list(types)}" if types else ""))
    from polymodal.explain import methods_of

    method = method or methods_of(model)[0]
    rng = np.random.default_rng(seed)
    images, orders, randoms, grids = [], [], [], []
    for chunk in chunks(recs, batch_size):
        exs = model.explain([r["image"] for r in chunk], [r["question"] for r in chunk], method=method)
        for r, ex in zip(chunk, exs):
            img = np.asarray(load_image(r["image"]).convert("RGB"))
            h, w = ex.grid.shape
            images.append(img)
            grids.append((h, w))
            # most relevant first; ties (e.g. an all-zero map) keep grid order
            orders.append(np.argsort(-ex.grid.reshape(-1), kind="stable"))
            randoms.append(rng.permutation(h * w))
    fractions = [k / steps for k in range(steps + 1)]
    task = get_task("vqa")
    curves = {"relevant": [], "random": []}
    for name, order_of in (("relevant", orders), ("random", randoms)):
        for f in fractions:
            masked = []
            for img, order, grid in zip(images, order_of, grids):
                n = round(f * grid[0] * grid[1])
                masked.append(_masked(img, order[:n], grid, _background(img)) if n else img)
            answers = []
            for idx in chunks(range(len(recs)), batch_size):
                answers += model.answer([masked[i] for i in idx], [recs[i]["question"] for i in idx])
            preds = {r["id"]: a for r, a in zip(recs, answers)}
            curves[name].append(float(task.score(preds, recs)["accuracy"]))
        log.info("deletion %s: %s", name, curves[name])
    auc = {k: float(np.trapezoid(v, fractions)) if hasattr(np, "trapezoid") else float(np.trapz(v, fractions))
           for k, v in curves.items()}
    return {"n": len(recs), "method": method, "fractions": fractions, **curves,
            "auc_relevant": auc["relevant"], "auc_random": auc["random"]}
