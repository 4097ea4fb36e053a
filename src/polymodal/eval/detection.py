"""Text-queried detection: COCO average precision (pycocotools' COCOeval, not a re-implementation)
over (image, phrase) queries, per phrase kind, and false positives where nothing matches.

Each query (an image with a phrase) is one COCO "image" whose ground truth is the boxes the
phrase names, all of one category; COCOeval then pools every query's detections, as the
per-category AP of a detector whose categories are the phrases. A query that matches nothing
has no ground truth, so each box predicted there is a false positive in the pooled AP; on such
queries alone AP is undefined, and what is measured is the boxes per query scoring at least a
threshold (`fp_per_image`).
"""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from typing import Any, Mapping

from polymodal.errors import DataError
from polymodal.eval._common import Metric
from polymodal.registry import METRICS


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_ap(predictions: Mapping[str, list[dict]], references: Mapping[str, list], ids: list[str]) -> tuple[float, float]:
    """(AP@[.5:.95], AP@0.5) of COCOeval over the queries `ids`; NaN when they hold no box at all.

    Args:
        predictions: query id -> [{"box": [x0, y0, x1, y1], "score": s}, ...] (pixels).
        references: query id -> [[x0, y0, x1, y1], ...] (pixels; [] when nothing matches).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(references[i] for i in ids):
        return float("nan"), float("nan")
    num = {k: n for n, k in enumerate(ids, 1)}                             # COCO wants integer image ids
    gt = {"images": [{"id": num[k]} for k in ids], "categories": [{"id": 1, "name": "query"}], "annotations": []}
    for k in ids:
        for box in references[k]:
            x, y, w, h = _xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": num[k], "category_id": 1,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    dets = [{"image_id": num[k], "category_id": 1, "bbox": _xywh(d["box"]), "score": float(d["score"])}
            for k in ids for d in predictions.get(k, [])]
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):                         # COCOeval prints its tables
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.params.imgIds = [num[k] for k in ids]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def detection_metrics(predictions: Mapping[str, list[dict]], references: Mapping[str, list],
                      kinds: Mapping[str, str] | None = None, threshold: float = 0.5) -> dict[str, float]:
    """AP@0.5 and AP@[.5:.95] over every query, per phrase kind, and false positives per query
    where nothing matches.

    Args:
        predictions: query id -> [{"box": [x0, y0, x1, y1], "score"}] in pixels, any number.
        references: query id -> the boxes its phrase names (pixels; [] when nothing matches).
        kinds: query id -> its phrase kind (shapes world: color, shape, color_shape, size_shape, none).
        threshold: the score from which a box counts as an answer (`fp_per_image`).
    Returns:
        {"AP@0.5", "AP@[.5:.95]", "AP@0.5[phrase_kind=K]", ..., "fp_per_image@T[empty]" (boxes
        scoring >= T per query that matches nothing), "n", "n_empty"}.
    """
    ids = [k for k in references if k in predictions]
    if not ids:
        raise DataError("detection: no predictions for the references' ids")
    for k in ids:
        if not isinstance(predictions[k], list) or not all(isinstance(d, dict) and "box" in d and "score" in d
                                                          for d in predictions[k]):
            raise DataError(f"detection: the prediction of {k!r} should be a list of {{\"box\", \"score\"}}, "
                            f"got {str(predictions[k])[:80]}")
    out: dict[str, float] = {}
    out["AP@[.5:.95]"], out["AP@0.5"] = coco_ap(predictions, references, ids)
    groups: dict[str, list[str]] = defaultdict(list)
    for k in ids:
        if kinds and kinds.get(k) is not None:
            groups[kinds[k]].append(k)
    for kind, members in sorted(groups.items()):
        if any(references[k] for k in members):
            strict, loose = coco_ap(predictions, references, members)
            out[f"AP@0.5[phrase_kind={kind}]"], out[f"AP@[.5:.95][phrase_kind={kind}]"] = loose, strict
        out[f"n[phrase_kind={kind}]"] = float(len(members))
    empty = [k for k in ids if not references[k]]
    if empty:
        fp = sum(sum(float(d["score"]) >= threshold for d in predictions[k]) for k in empty)
        out[f"fp_per_image@{threshold:g}[empty]"] = fp / len(empty)
    out["n"], out["n_empty"] = float(len(ids)), float(len(empty))
    return out


@METRICS.register("detection")
class DetectionMetrics(Metric):
    """COCO AP of text-queried detection (see `detection_metrics`).

    Args:
        threshold: the score from which a box is an answer, for false positives per empty query.
    """

    main = "AP@0.5"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def __call__(self, predictions: Any, references: Any, kinds: Any = None) -> dict[str, float]:
        return detection_metrics(predictions, references, kinds, threshold=self.threshold)
