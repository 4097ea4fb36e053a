"""VQA accuracy as the official VQAv2 evaluation computes it (Antol et al. 2015; Goyal et al. 2017).

An answer scores min(#matching annotators / 3, 1), averaged over the ten subsets of nine of the
ten annotators -- so 2 of 10 matching gives 0.6, not 2/3. Scores are fractions in [0, 1] (the
script prints percentages).

Which answers match depends on the normalisation (polymodal.data.answers: whitespace, punctuation,
words) and on which side gets it. Three named rules:

- "official" (the default; what `polymodal eval` reports): the official evaluation script,
  GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, as the VQA challenge's
  evaluation server and LAVIS run it (the repository's version from July 2015 to March 2021). The
  prediction always gets every step ("the two dogs" -> "2 dogs", "Yes." -> "yes"); the
  references are compared as written, except that when they disagree (more than one distinct
  answer) each gets the punctuation step alone. So a prediction "two" scores 0 against ten
  references "two", and 1 against ten "2".
- "official_2021": the same script after its commit a013f00 ("Fixed processing answers bug",
  2021-03-11): both sides get the whitespace step; when the references disagree both get every
  step, otherwise neither does (then "yes." scores 0 against ten "yes").
- "normalized": both sides always get every step. Not the official number; meant for data whose
  references are not VQA-normalised (one free-text answer per question such as "Two dogs."),
  where the official rules would count a right answer as wrong.

Any number of reference answers works: one reference is plain exact match under the rule;
with n >= 2 each leave-one-out subset of n-1 answers counts min(#matching / min(3, n-1), 1), which
is the official formula for n >= 4 (VQAv2, VizWiz, TextVQA and OK-VQA have 10).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Mapping, Sequence

from polymodal.data.answers import clean_whitespace, normalize_answer, normalize_punctuation
from polymodal.errors import ConfigError, DataError
from polymodal.eval._common import Metric, align, as_reference_list, mean
from polymodal.registry import METRICS

#: The ways to compare answers (see the module docstring); "official" is the default.
RULES = ("official", "official_2021", "normalized")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"vqa: unknown rule {rule!r}; one of: {', '.join(RULES)}")


def _compared(prediction: str, references: Sequence[str], rule: str = "official") -> tuple[str, list[str]]:
    """The prediction and references as `rule` compares them (see the module docstring)."""
    _check_rule(rule)
    if rule == "normalized":
        return normalize_answer(prediction), [normalize_answer(r) for r in references]
    if rule == "official":
        refs = list(references)
        if len(set(refs)) > 1:
            refs = [normalize_punctuation(r) for r in refs]
        return normalize_answer(prediction), refs
    # official_2021
    pred, refs = clean_whitespace(prediction), [clean_whitespace(r) for r in references]
    if len(set(refs)) > 1:
        return normalize_answer(pred), [normalize_answer(r) for r in refs]
    return pred, refs


def vqa_score(prediction: str, references: Sequence[str], rule: str = "official") -> float:
    """Accuracy of one answer against its reference answers (see the module docstring).

    Args:
        prediction: the predicted answer.
        references: the annotators' answers (10 in VQAv2; any number >= 1).
        rule: "official" (default), "official_2021" or "normalized": how answers are compared.
    """
    pred, refs = _compared(prediction, references, rule)
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
                 rule: str = "official") -> dict[str, float]:
    """VQA accuracy overall, per question type and per answer type.

    Args:
        predictions: question id -> predicted answer.
        references: question id -> reference answers (a list, or one string).
        question_types: question id -> type ("what color is the", ...), optional.
        answer_types: question id -> type ("yes/no", "number", "other"), optional.
        rule: how answers are compared: "official" (default), "official_2021" or "normalized".
    Returns:
        {"accuracy", "n", "accuracy[answer_type=yes/no]", "n[answer_type=yes/no]",
         "accuracy[question_type=...]", "n[question_type=...]", ...}, fractions in [0, 1].
    """
    _check_rule(rule)
    ids = align(predictions, references, "vqa")
    scores = {}
    for qid in ids:
        pred = predictions[qid]
        if not isinstance(pred, str):
            raise DataError(f"vqa: prediction for question {qid!r} must be a string, got {pred!r}")
        refs = as_reference_list(references[qid], f"vqa: references[{qid!r}]")
        scores[qid] = vqa_score(pred, refs, rule=rule)
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
        rule: how answers are compared: "official" (default), "official_2021" or "normalized".
    """

    main = "accuracy"

    def __init__(self, rule: str = "official"):
        _check_rule(rule)
        self.rule = rule

    def __call__(self, predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                 question_types: Mapping[Hashable, str] | None = None,
                 answer_types: Mapping[Hashable, str] | None = None) -> dict[str, float]:
        return vqa_accuracy(predictions, references, question_types, answer_types,
                            rule=self.rule)
