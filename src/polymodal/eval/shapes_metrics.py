"""Ground-truth metrics that only a generated world can give: caption hallucination (CHAIR) with
attributes bound to objects, and object recall, checked against each image's exact scene record.

A mention is an object phrase of a caption with the attributes attached to it ("a small red
circle" -> shape circle, colour red, size small), read by the caption parser below. It is
hallucinated when no object of the scene has every attribute the mention names — stricter than
the generic CHAIR, which checks attributes against the scene as a bag. The scores themselves are
the one CHAIR of `polymodal.eval.hallucination` (`chair_scores`). Counts ("two circles") are
scored apart as count accuracy.

The same parser reads a whole English caption as claims about a scene (`caption_claim`,
`caption_true`), which gives the ceiling of image-text retrieval on shapes-world records
(`retrieval_ceiling`): many captions are true of several images, so no model can reach R@1 = 1.
"""
from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from polymodal.data.shapes.world import GENERIC_NOUNS, NUMBERS_EN, NUMBERS_ZH, VOCAB, relation
from polymodal.errors import DataError
from polymodal.eval._common import Metric
from polymodal.eval.hallucination import chair_scores
from polymodal.eval.retrieval import ideal_recalls, recall_ks
from polymodal.registry import METRICS

logger = logging.getLogger(__name__)


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
    return any(_names(mention, o) for o in scene["objects"])


def _names(mention: dict, obj: dict) -> bool:
    """Whether the object has every attribute the mention names (count ignored)."""
    for k in ("shape", "color", "size"):   # a plain loop: the retrieval ceiling calls this ~10^6 times
        v = mention.get(k)
        if v and obj.get(k) != v:
            return False
    return True


# ------------------------------------------------------------------ what a caption claims
# An English caption read as claims about a scene. The forms are those of the world's caption
# templates (polymodal.data.shapes.world.captions); each says what its sentence asserts:
#
#   "A large red circle, a small blue square and ..."      every object (a listing)
#   "There are three shapes: a red circle, ..."            the object count; every object
#   "An image with two red circles and a blue square."     every object, counted per kind
#   "A red circle is to the left of a blue square."        some such pair, by `world.relation`
#   "A large red circle on a dark background."             every object (the only one)
#   "From left to right: a red circle and a blue square."  every object, in this order
#
# A listing claims the whole scene: the generator writes a listing only with every object in it
# (the relation caption is the one form that names some objects only), so "An image with a red
# circle" is false of a scene that also holds a square. Listings other than "From left to
# right" claim no order, though the generator happens to write the first template left to right
# and the groups of the third in the order their leftmost members appear; a model that learnt
# those habits could beat the ceiling on scenes with the same objects in another layout.

_ARTICLES = ("a", "an", "the")
_RELATIONS_EN = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
_FORMS = (  # (pattern over the lower-cased caption without its final period, kind, ordered)
    (re.compile(r"from left to right: (?P<list>.+)"), "objects", True),
    (re.compile(r"there (?:is|are) (?P<total>[a-z]+) (?:shape|object|thing)s?: (?P<list>.+)"), "objects", False),
    (re.compile(r"an image with (?P<list>.+)"), "objects", False),
    (re.compile(r"(?P<a>.+?) is (?P<rel>" + "|".join(_RELATIONS_EN) + r") (?P<b>.+)"), "relation", False),
    (re.compile(r"(?P<list>.+?) on a dark background"), "objects", False),
    (re.compile(r"(?P<list>.+)"), "objects", False),
)


@dataclass(frozen=True)
class CaptionClaim:
    """What an English shapes-world caption asserts (see `caption_claim`).

    Attributes:
        kind: "objects" (the scene holds exactly these objects) or "relation" (some object
            named by `mentions[0]` stands in `relation` to some object named by `mentions[1]`).
        mentions: the object phrases, as `extract_concepts` reads them ({"shape", "color",
            "size", "count"}; count None means one).
        ordered: the objects are listed from left to right.
        total: the object count the caption states ("There are three shapes: ..."), if any.
        relation: "left", "right", "above" or "below" (kind "relation").
    """

    kind: str
    mentions: tuple[dict, ...]
    ordered: bool = False
    total: int | None = None
    relation: str | None = None

    def holds(self, scene: dict) -> bool:
        """Whether every claim holds of the scene (objects with shape, colour, size, centre)."""
        objs = scene["objects"]
        if self.kind == "relation":
            a = [p for p in objs if _names(self.mentions[0], p)]
            b = [q for q in objs if _names(self.mentions[1], q)]
            return any(p is not q and self.relation in relation(p, q, scene["width"]) for p in a for q in b)
        slots = [m for m in self.mentions for _ in range(m["count"] or 1)]
        if len(slots) != len(objs) or (self.total is not None and self.total != len(objs)):
            return False
        if not self.ordered:
            return _one_each(slots, objs)
        # left to right; objects at exactly the same x may come in either order
        pos = 0
        for _, same_x in itertools.groupby(sorted(objs, key=lambda o: o["center"][0]), key=lambda o: o["center"][0]):
            same_x = list(same_x)
            if not _one_each(slots[pos:pos + len(same_x)], same_x):
                return False
            pos += len(same_x)
        return True


def _one_each(slots: list[dict], objs: list[dict]) -> bool:
    """Whether every slot (a mention standing for one object) names its own object, all objects
    used: a bipartite matching, by augmenting paths (a scene has at most 8 objects)."""
    owner: dict[int, int] = {}                     # object index -> slot index

    def place(s: int, seen: set[int]) -> bool:
        for j, o in enumerate(objs):
            if j not in seen and _names(slots[s], o):
                seen.add(j)
                if j not in owner or place(owner[j], seen):
                    owner[j] = s
                    return True
        return False

    return len(slots) == len(objs) and all(place(s, set()) for s in range(len(slots)))


def _phrase(text: str) -> dict | None:
    """One noun phrase ("a large red circle", "two blue squares") as a mention; None when it is
    anything else: an unknown word, a word twice, a missing or non-final noun."""
    tokens = text.split()
    if not tokens or not all(re.fullmatch(r"[a-z]+", t) for t in tokens):
        return None
    if tokens[0] in _ARTICLES or tokens[0] in _EN_NUMBERS:
        tokens = tokens[1:]
    kinds = [_EN_WORDS.get(t, (None, None))[0] for t in tokens]
    if (not kinds or kinds[-1] not in ("shape", "noun") or None in kinds
            or any(k in ("shape", "noun") for k in kinds[:-1]) or len(set(kinds)) != len(kinds)):
        return None
    mention, = extract_concepts(text, "en")
    return None if mention["count"] == 0 else mention


def caption_claim(caption: str) -> CaptionClaim | None:
    """What an English shapes-world caption asserts, or None when the parser cannot read all of it.

    The forms read are those of the world's caption templates (listed above this function in
    the source); a sentence of another form, or with a word the world does not use, is unread
    rather than guessed, so that no claim is silently dropped.

    Args:
        caption: one English sentence, e.g. "There are two shapes: a red circle and a blue square."
    """
    text = " ".join(caption.lower().split()).removesuffix(".").strip()
    for pattern, kind, ordered in _FORMS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        if kind == "relation":
            a, b = _phrase(m["a"]), _phrase(m["b"])
            if a is None or b is None or (a["count"] or 1) != 1 or (b["count"] or 1) != 1:
                return None
            return CaptionClaim("relation", (a, b), relation=_RELATIONS_EN[m["rel"]])
        mentions = [_phrase(p) for p in re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", m["list"])]
        total = _EN_NUMBERS.get(m["total"], -1) if "total" in pattern.groupindex else None
        if None in mentions or total == -1:
            return None
        return CaptionClaim("objects", tuple(mentions), ordered=ordered, total=total)
    return None


def caption_true(caption: str, scene: dict) -> bool | None:
    """Whether an English caption is true of a scene: every claim it makes holds. None when the
    caption cannot be read (`caption_claim`), never a silent True.

    Args:
        caption: an English shapes-world caption.
        scene: a scene record (its objects with shape, color, size and center; its width).
    """
    claim = caption_claim(caption)
    return None if claim is None else claim.holds(scene)


# --------------------------------------------------------------------- retrieval ceiling

def caption_fits(texts: Sequence[str], scenes: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Which scenes each caption is true of.

    Args:
        texts: English captions. scenes: scene records.
    Returns:
        (fits (n_scenes, n_texts) bool, read (n_texts,) bool: whether the caption could be read;
        an unread caption's column is all False).
    """
    fits = np.zeros((len(scenes), len(texts)), dtype=bool)
    read = np.zeros(len(texts), dtype=bool)
    n_objects = np.array([len(s["objects"]) for s in scenes])
    columns: dict[str, np.ndarray | None] = {}     # the same caption is often written of many images
    for j, text in enumerate(texts):
        if text not in columns:
            claim = caption_claim(text)
            if claim is None:
                columns[text] = None
            else:
                # a listing fits only scenes with as many objects as it names: test those only
                slots = sum(m["count"] or 1 for m in claim.mentions)
                candidates = range(len(scenes)) if claim.kind == "relation" else np.flatnonzero(n_objects == slots)
                col = np.zeros(len(scenes), dtype=bool)
                col[[i for i in candidates if claim.holds(scenes[i])]] = True
                columns[text] = col
        if columns[text] is not None:
            fits[:, j], read[j] = columns[text], True
    return fits, read


def retrieval_ceiling(texts: Sequence[str], text_to_image: Sequence[int], scenes: Sequence[dict],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """The expected Recall@K of an ideal model on shapes-world retrieval (`ideal_recalls`), where
    a caption fits every image it is true of (`caption_true`).

    A caption the parser cannot read fits its own image only: the conservative choice, which
    can only raise the ceiling (an unread caption looks unambiguous). Their number is reported
    as `n_unread_texts`; a caption false of its own image (never, for the generator's captions)
    is logged and counted as fitting it.

    Args:
        texts: English captions. text_to_image: (n_texts,) index of each caption's scene.
        scenes: the scene records of the images. ks: the K of Recall@K.
    Returns:
        {"ceiling_i2t_r1", ..., "ceiling_t2i_r1", ..., "ceiling_r_mean", "n_unread_texts"}.
    """
    if len(texts) != len(text_to_image):
        raise DataError(f"retrieval ceiling: {len(texts)} texts but {len(text_to_image)} image indices")
    fits, read = caption_fits(texts, scenes)
    gt = np.asarray(text_to_image, dtype=np.int64)
    false_of_own = read & ~fits[gt, np.arange(len(texts))]
    if false_of_own.any():
        j = int(np.flatnonzero(false_of_own)[0])
        logger.warning("retrieval ceiling: %d caption(s) are false of their own image by the parser, e.g. %r; "
                       "counted as fitting it", int(false_of_own.sum()), texts[j])
    return {**ideal_recalls(fits, gt, ks), "n_unread_texts": float((~read).sum())}


@METRICS.register("shapes_retrieval_ceiling")
class ShapesRetrievalCeiling(Metric):
    """Expected Recall@K both ways of an ideal model on shapes-world records (`retrieval_ceiling`).

    Args:
        ks: the K of Recall@K.
    """

    main = "ceiling_r_mean"

    def __init__(self, ks: list[int] = (1, 5, 10)):
        self.ks = recall_ks(ks, "shapes_retrieval_ceiling")

    def __call__(self, texts: Sequence[str], text_to_image: Sequence[int],
                 scenes: Sequence[dict]) -> dict[str, float]:
        return retrieval_ceiling(texts, text_to_image, scenes, ks=self.ks)


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
