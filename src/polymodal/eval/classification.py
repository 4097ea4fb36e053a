"""Classification metrics: accuracy, macro-F1 and, for binary tasks, AUROC (ties handled).

Predictions may be given as labels, or as class scores from which the arg-max is taken.
Macro-F1 averages the per-class F1 over the classes that occur in the references or the
predictions (scikit-learn's default set), so an unused class neither counts as 0 nor as 1.
AUROC is the Mann-Whitney statistic: the chance that a random positive scores above a random
negative, ties counting one half -- exactly the area under the trapezoidal ROC curve.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from polymodal.errors import DataError
from polymodal.eval._common import Metric, align, as_numpy
from polymodal.registry import METRICS

logger = logging.getLogger(__name__)


def binary_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve for binary labels (1 = positive) and scores (higher = positive).

    Args:
        labels: (n,) 0/1 or bool.
        scores: (n,) real scores; ties between a positive and a negative count 1/2.
    """
    y = as_numpy(labels, "auroc: labels")
    s = as_numpy(scores, "auroc: scores")
    if y.ndim != 1 or s.shape != y.shape:
        raise DataError(f"auroc: labels and scores must be two vectors of one length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise DataError("auroc: labels must be 0/1 (or bool)")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"auroc: needs both classes, got {n_pos} positive and {n_neg} negative examples")
    # Average ranks (1-based) with ties sharing the mean of their positions.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])   # first index of each tie group
    ends = np.r_[starts[1:], len(s)]                                        # one past the last
    group_rank = (starts + 1 + ends) / 2.0                                  # mean of positions start+1..end
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(group_rank, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(references: Any, predictions: Any = None, scores: Any = None) -> dict[str, float]:
    """Accuracy, macro-F1, and AUROC when the task is binary and scores are given.

    Args:
        references: (n,) true labels (ints or strings), or a mapping id -> label.
        predictions: (n,) predicted labels (or a mapping id -> label); optional with 2-D scores.
        scores: (n, C) class scores (labels must then be 0..C-1; the prediction is the arg-max),
            or (n,) scores of class 1 in a binary task. A mapping id -> scores also works.
    Returns:
        {"accuracy", "macro_f1", ["auroc"], "n"}.
    """
    if isinstance(references, Mapping):
        given = predictions if predictions is not None else scores
        ids = align(given, references, "classification")
        references = [references[i] for i in ids]
        predictions = None if predictions is None else [predictions[i] for i in ids]
        scores = None if scores is None else [scores[i] for i in ids]
    ref = np.asarray(references)
    if ref.ndim != 1 or len(ref) == 0:
        raise DataError(f"classification: references must be a non-empty vector of labels, got shape {ref.shape}")
    score_arr = None
    if scores is not None:
        score_arr = as_numpy(scores, "classification: scores")
        if score_arr.shape[0] != len(ref) or score_arr.ndim not in (1, 2):
            raise DataError(f"classification: scores must be (n,) or (n, C) with n = {len(ref)}, "
                            f"got {score_arr.shape}")
        if ref.dtype.kind not in "iub":
            raise DataError("classification: with scores, references must be class indices 0..C-1")
    if predictions is None:
        if score_arr is None or score_arr.ndim != 2:
            raise DataError("classification: give predicted labels, or (n, C) scores to take the arg-max of")
        predictions = score_arr.argmax(1)
    pred = np.asarray(predictions)
    if pred.shape != ref.shape:
        raise DataError(f"classification: {len(pred)} predictions for {len(ref)} references")
    if (pred.dtype.kind in "US") != (ref.dtype.kind in "US"):
        raise DataError(f"classification: predictions ({pred.dtype}) and references ({ref.dtype}) must both "
                        "be class indices or both be label strings")

    out = {"accuracy": float((pred == ref).mean())}
    f1s = []
    for c in np.union1d(ref, pred):
        tp = int(((pred == c) & (ref == c)).sum())
        fp = int(((pred == c) & (ref != c)).sum())
        fn = int(((pred != c) & (ref == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn))   # > 0 denominator: c occurs somewhere
    out["macro_f1"] = float(np.mean(f1s))

    if score_arr is not None and (score_arr.ndim == 1 or score_arr.shape[1] == 2):
        # Binary: a (n, 2) score pair ranks like its difference (for logits, the softmax of class 1
        # is a monotone function of l1 - l0; for probabilities, p1 - p0 = 2 p1 - 1).
        positive = score_arr if score_arr.ndim == 1 else score_arr[:, 1] - score_arr[:, 0]
        if not np.isin(ref, (0, 1)).all():
            raise DataError("classification: binary scores need references 0/1")
        if ref.min() == ref.max():
            logger.warning("classification: AUROC left out, the references hold only class %d", int(ref[0]))
        else:
            out["auroc"] = binary_auroc(ref, positive)
    out["n"] = float(len(ref))
    return out


@METRICS.register("classification")
class ClassificationMetrics(Metric):
    """Accuracy, macro-F1, binary AUROC (see `classification_metrics`)."""

    main = "accuracy"

    def __call__(self, references: Any, predictions: Any = None, scores: Any = None) -> dict[str, float]:
        return classification_metrics(references, predictions=predictions, scores=scores)
