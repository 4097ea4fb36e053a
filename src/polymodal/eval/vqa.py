"""VQA accuracy as the official VQAv2 evaluation computes it (Antol et al. 2015; Goyal et al. 2017).

An answer scores min(#matching annotators / 3, 1), averaged over the ten subsets of nine of the
ten annotators -- so 2 of 10 matching gives 0.6, not 2/3. Answers are compared after the official
normalisation: punctuation removed or turned into spaces (kept inside numbers such as 3.5), a
final period dropped, lower-cased, number words to digits ("two" -> "2"), articles dropped
("a dog" -> "dog"), contractions restored ("dont" -> "don't").

Any number of reference answers works: one reference is plain exact match after normalisation;
with n >= 2 each leave-one-out subset of n-1 answers counts min(#matching / min(3, n-1), 1), which
is the official formula for n >= 4 (VQAv2, VizWiz, TextVQA and OK-VQA have 10).

One deliberate difference from the official script: it normalises answers only for questions
whose references disagree, so "yes." scores 0 where all ten annotators said "yes". Here both
sides are always normalised; `exact_official=True` reproduces the script's behaviour exactly.
Scores are fractions in [0, 1] (the script prints percentages).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Mapping, Sequence

from polymodal.data.answers import normalize_answer
from polymodal.errors import DataError
from polymodal.eval._common import Metric, align, as_reference_list, mean
from polymodal.registry import METRICS

def vqa_score(prediction: str, references: Sequence[str], exact_official: bool = False) -> float:
    """Accuracy of one answer against its reference answers (see the module docstring).

    Args:
        prediction: the predicted answer.
        references: the annotators' answers (10 in VQAv2; any number >= 1).
        exact_official: normalise only when the references disagree, as the official script does.
    """
    if exact_official:
        pred = prediction.replace("\n", " ").replace("\t", " ").strip()
        refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
        if len(set(refs)) > 1:
            pred, refs = normalize_answer(pred), [normalize_answer(r) for r in refs]
        pred, refs = pred.lower(), [r.lower() for r in refs]
    else:
        pred, refs = normalize_answer(prediction), [normalize_answer(r) for r in references]
    n = len(refs)
    if n == 1:
        return float(pred == refs[0])
    # Leave each annotator out in turn; among the others, `need` matches give full credit.
    need = min(3, n - 1)
    matches = sum(r == pred for r in refs)
    # Leaving out a matching annotator removes one match; leaving out another one removes none.
    total = matches * min(1.0, (matches - 1) / need) + (n - matches) * min(1.0, matches / need)
    return total / n


def vqa_accuracy(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                 question_types: Mapping[Hashable, str] | None = None,
                 answer_types: Mapping[Hashable, str] | None = None,
                 exact_official: bool = False) -> dict[str, float]:
    """VQA accuracy overall, per question type and per answer type.

    Args:
        predictions: question id -> predicted answer.
        references: question id -> reference answers (a list, or one string).
        question_types: question id -> type ("what color is the", ...), optional.
        answer_types: question id -> type ("yes/no", "number", "other"), optional.
        exact_official: reproduce the official script's normalise-only-on-disagreement quirk.
    Returns:
        {"accuracy", "n", "accuracy[answer_type=yes/no]", "n[answer_type=yes/no]",
         "accuracy[question_type=...]", "n[question_type=...]", ...}, fractions in [0, 1].
    """
    ids = align(predictions, references, "vqa")
    scores = {}
    for qid in ids:
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise DataError(f"vqa: prediction for question {qid!r} must be a string, got {pred!r}")
        scores[qid] = vqa_score(pred, as_reference_list(references[qid], f"vqa: references[{qid!r}]"),
                                exact_official=exact_official)
    out = {"accuracy": mean(list(scores.values())), "n": float(len(ids))}
    for kind, types in (("answer_type", answer_types), ("question_type", question_types)):
        if types is None:
            continue
        groups: dict[str, list[float]] = defaultdict(list)
        for qid in ids:
            if qid not in types:
                raise DataError(f"vqa: question {qid!r} has no {kind}; give one for every question or none")
            groups[types[qid]].append(scores[qid])
        for name in sorted(groups):
            out[f"accuracy[{kind}={name}]"] = mean(groups[name])
            out[f"n[{kind}={name}]"] = float(len(groups[name]))
    return out


@METRICS.register("vqa")
class VQAAccuracy(Metric):
    """Official VQAv2 accuracy (see `vqa_accuracy`).

    Args:
        exact_official: normalise answers only when references disagree, as the official script.
    """

    main = "accuracy"

    def __init__(self, exact_official: bool = False):
        self.exact_official = exact_official

    def __call__(self, predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                 question_types: Mapping[Hashable, str] | None = None,
                 answer_types: Mapping[Hashable, str] | None = None) -> dict[str, float]:
        return vqa_accuracy(predictions, references, question_types, answer_types,
                            exact_official=self.exact_official)
