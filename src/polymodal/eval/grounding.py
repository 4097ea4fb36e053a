"""Grounding (localising a described object): accuracy at IoU >= 0.5 and mean IoU of boxes."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from polymodal.errors import DataError
from polymodal.eval._common import Metric, align, as_numpy
from polymodal.registry import METRICS


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Intersection over union of matching boxes (x0, y0, x1, y1): (n, 4), (n, 4) -> (n,).

    A box with x1 < x0 or y1 < y0 has no area (IoU 0), as has a pair whose union is empty.
    """
    a = as_numpy(boxes_a, "box_iou: boxes")
    b = as_numpy(boxes_b, "box_iou: boxes")
    if a.ndim != 2 or a.shape[1] != 4 or a.shape != b.shape:
        raise DataError(f"box_iou: expected two (n, 4) arrays of (x0, y0, x1, y1), got {a.shape} and {b.shape}")
    wh_a = np.clip(a[:, 2:] - a[:, :2], 0, None)                       # (n, 2)
    wh_b = np.clip(b[:, 2:] - b[:, :2], 0, None)
    inter_wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = inter_wh.prod(1)
    union = wh_a.prod(1) + wh_b.prod(1) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def grounding_metrics(predictions: Any, references: Any, iou_threshold: float = 0.5) -> dict[str, float]:
    """Localisation of described objects: accuracy at IoU >= threshold, and mean IoU.

    Args:
        predictions: (n, 4) predicted boxes (x0, y0, x1, y1), or a mapping id -> box.
        references: (n, 4) gold boxes in the same coordinates, or a mapping id -> box.
        iou_threshold: a prediction is correct when its IoU with the gold box is at least this.
    Returns:
        {"accuracy@0.5" (the threshold in the key), "mean_iou", "n"}.
    """
    if isinstance(predictions, Mapping):
        ids = align(predictions, references, "grounding")
        predictions = [predictions[i] for i in ids]
        references = [references[i] for i in ids]
    gold = as_numpy(references, "grounding: reference boxes")
    if gold.ndim == 2 and gold.shape[1] == 4 and ((gold[:, 2] < gold[:, 0]) | (gold[:, 3] < gold[:, 1])).any():
        raise DataError("grounding: some reference boxes have x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1)")
    iou = box_iou(predictions, gold)
    if len(iou) == 0:
        raise DataError("grounding: no boxes to score")
    return {f"accuracy@{iou_threshold:g}": float((iou >= iou_threshold).mean()),
            "mean_iou": float(iou.mean()), "n": float(len(iou))}


@METRICS.register("grounding")
class GroundingMetrics(Metric):
    """Accuracy at IoU >= threshold and mean IoU (see `grounding_metrics`).

    Args:
        iou_threshold: IoU needed for a box to count as correct (0.5 by convention).
    """

    def __init__(self, iou_threshold: float = 0.5):
        self.iou_threshold = float(iou_threshold)
        self.main = f"accuracy@{self.iou_threshold:g}"

    def __call__(self, predictions: Any, references: Any) -> dict[str, float]:
        return grounding_metrics(predictions, references, iou_threshold=self.iou_threshold)
