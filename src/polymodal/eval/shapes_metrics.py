"""Ground-truth metrics that only a generated world can give: caption hallucination (CHAIR) with
attributes bound to objects, and object recall, checked against each image's exact scene record.

A mention is an object phrase of a caption with the attributes attached to it ("a small red
circle" -> shape circle, colour red, size small), read by the caption parser below. It is
hallucinated when no object of the scene has every attribute the mention names — stricter than
the generic CHAIR, which checks attributes against the scene as a bag. The scores themselves are
the one CHAIR of `polymodal.eval.hallucination` (`chair_scores`). Counts ("two circles") are
scored apart as count accuracy.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from polymodal.data.shapes.world import GENERIC_NOUNS, NUMBERS_EN, NUMBERS_ZH, VOCAB
from polymodal.eval._common import Metric
from polymodal.eval.hallucination import chair_scores
from polymodal.registry import METRICS


# ------------------------------------------------------------------------ the caption parser
# Concepts mentioned in a caption, with their attributes bound to each object; the words are
# the world's (polymodal.data.shapes.world), synonyms and Chinese included.

def _word_table(lang: str) -> dict[str, tuple[str, str]]:
    table = {}
    for kind, entries in VOCAB.items():
        for canon, words in entries.items():
            for w in words[lang]:
                table[w] = (kind, canon)
    for w in GENERIC_NOUNS[lang]:
        table[w] = ("noun", "")
    return table


_EN_WORDS = _word_table("en")
_ZH_WORDS = _word_table("zh")
_ZH_PATTERN = re.compile("|".join(sorted(map(re.escape, list(_ZH_WORDS) + list(NUMBERS_ZH.values())
                                             + ["二", "没有"]), key=len, reverse=True)))
_EN_NUMBERS = {w: k for k, w in NUMBERS_EN.items()} | {"zero": 0, "single": 1}
_ZH_NUMBERS = {w: k for k, w in NUMBERS_ZH.items()} | {"二": 2, "没有": 0}


def extract_concepts(text: str, lang: str | None = None) -> list[dict]:
    """Objects a caption mentions, with the attributes and count attached to each.

    "Two red circles and a small square" -> [{"shape": "circle", "color": "red", "size": None,
    "count": 2}, {"shape": "square", "color": None, "size": "small", "count": None}].
    Generic nouns ("the red object") give shape None. Count 0 ("no squares") claims absence.

    Args:
        text: an English or Chinese caption.
        lang: "en" or "zh"; guessed from the characters when None.
    """
    if lang is None:
        lang = "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"
    if lang == "en":
        tokens = re.findall(r"[a-z]+", text.lower())
        table, numbers = _EN_WORDS, _EN_NUMBERS
    elif lang == "zh":
        tokens = _ZH_PATTERN.findall(text)
        table, numbers = _ZH_WORDS, _ZH_NUMBERS
    else:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    mentions, pending = [], {"color": None, "size": None, "count": None}
    for tok in tokens:
        if tok in numbers:
            pending["count"] = numbers[tok]
            continue
        kind, canon = table.get(tok, (None, None))
        if kind in ("color", "size"):
            pending[kind] = canon
        elif kind in ("shape", "noun"):
            mentions.append({"shape": canon or None, **pending})
            pending = {"color": None, "size": None, "count": None}
        elif tok not in ("a", "an", "the"):
            # any other word ends the noun phrase: "red" in "is red and ..." names no object
            pending = {"color": None, "size": None, "count": None}
    return mentions


def mention_in_scene(mention: dict, scene: dict) -> bool:
    """Whether some object of the scene has every attribute the mention names (count ignored)."""
    desc = {k: v for k, v in mention.items() if k in ("shape", "color", "size") and v}
    return any(all(o.get(k) == v for k, v in desc.items()) for o in scene["objects"])


# ---------------------------------------------------------------------------------- CHAIR


@METRICS.register("shapes_chair")
class ShapesChair(Metric):
    """CHAIR-i / CHAIR-s / object recall / count accuracy of captions against shapes-world scenes."""

    main = "chair_i"
    higher_is_better = False

    def __call__(self, captions: Mapping[str, str], scenes: Mapping[str, dict],
                 lang: str | None = None) -> dict[str, float]:
        n_mentions = n_bad = n_caps_bad = 0
        n_objects = n_recalled = 0
        n_counts = n_counts_ok = 0
        for key, caption in captions.items():
            scene = scenes[key]
            mentions = [m for m in extract_concepts(caption, lang) if m.get("count") != 0]
            bad = [m for m in mentions if not mention_in_scene(m, scene)]
            n_mentions += len(mentions)
            n_bad += len(bad)
            n_caps_bad += bool(bad)
            for o in scene["objects"]:
                n_objects += 1
                n_recalled += any(m.get("shape") == o["shape"] and m.get("color") in (None, o["color"])
                                  for m in mentions)
            for m in mentions:
                if isinstance(m.get("count"), int) and m["count"] > 1:
                    desc = {k: m[k] for k in ("shape", "color", "size") if m.get(k)}
                    true = sum(all(o.get(k) == v for k, v in desc.items()) for o in scene["objects"])
                    n_counts += 1
                    n_counts_ok += true == m["count"]
        chair = chair_scores(len(captions), n_mentions, n_bad, n_caps_bad, n_objects, n_recalled)
        return {**{k: chair[k] for k in ("chair_i", "chair_s", "object_recall")},
                "count_accuracy": n_counts_ok / n_counts if n_counts else float("nan"),
                "n_mentions": chair["n_mentions"], "n": chair["n"]}
