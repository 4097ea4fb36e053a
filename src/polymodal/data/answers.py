"""The official VQAv2 answer normalisation, one for training targets (answer vocabularies,
soft scores) and for scoring (polymodal.eval.vqa) alike. Its three steps, as the official
evaluation script (GT-Vision-Lab/VQA, vqaEval.py) runs them:

1. `clean_whitespace`: newlines and tabs become spaces, the ends are stripped;
2. `normalize_punctuation` (the script's processPunctuation): punctuation removed or turned into
   spaces (kept inside numbers such as 3.5, "1,000" -> "1000"), a final period dropped;
3. `normalize_words` (processDigitArticle): lower-cased, number words to digits ("two" -> "2"),
   articles dropped ("a dog" -> "dog"), contractions restored ("dont" -> "don't").

`normalize_answer` runs all three. Which steps the official VQA accuracy applies to which side
is polymodal.eval.vqa's business.
"""
from __future__ import annotations

import re

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


def clean_whitespace(answer: str) -> str:
    """Newlines and tabs to spaces, the ends stripped: " yes\n" -> "yes"."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_punctuation(answer: str) -> str:
    """The official punctuation step: "t-shirt" -> "t shirt", "1,000" -> "1000", "yes." -> "yes".

    Case, number words and articles are left alone.
    """
    # Official rule: a punctuation mark next to a space, or any mark in a text with a digit-comma-
    # digit ("1,000"), is deleted; otherwise it becomes a space ("t-shirt" -> "t shirt").
    # The test looks at the original text, not the partly cleaned one.
    delete_all = _DIGIT_COMMA_DIGIT.search(answer) is not None
    out = answer
    for p in _PUNCT:
        if delete_all or p + " " in answer or " " + p in answer:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The script passes re.UNICODE (32) where sub() takes its count: at most 32 periods go.
    return _PERIOD.sub("", out, count=32)


def normalize_words(answer: str) -> str:
    """The official word step: lower case, "two" -> "2", articles dropped, "dont" -> "don't"."""
    words = [_NUMBERS.get(w, w) for w in answer.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation, every step: "Two dogs." -> "2 dogs", "dont" -> "don't"."""
    return normalize_words(normalize_punctuation(clean_whitespace(answer)))
