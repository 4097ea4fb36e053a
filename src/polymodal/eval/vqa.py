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

import re
from collections import defaultdict
from typing import Hashable, Mapping, Sequence

from polymodal.errors import DataError
from polymodal.eval._common import Metric, align, as_reference_list, mean
from polymodal.registry import METRICS

# The official tables (VQA evaluation code, vqaEval.py), verbatim in content.
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
          ",", "?", "!"]
# A period that is not followed by a digit. (The official pattern starts with "(?!<=\d)", a
# lookahead typed for a lookbehind; before a "." it always holds, so it is left out here.)
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# Apostrophe-less spellings -> the annotators' form. Kept as the official table has it, quirks
# included ("somebody'd" -> "somebodyd"; capitalised keys never match lower-cased text).
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd
whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've
wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've
youll=you'll youre=you're youve=you've
""".split())


def _punctuation(text: str) -> str:
    # Official rule: a punctuation mark next to a space, or any mark in a text with a digit-comma-
    # digit ("1,000"), is deleted; otherwise it becomes a space ("t-shirt" -> "t shirt").
    # The test looks at the original text, not the partly cleaned one.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in _PUNCT:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation: "Two dogs." -> "2 dogs", "dont" -> "don't"."""
    return _digits_articles(_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


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
