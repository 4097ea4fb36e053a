"""CHAIR hallucination metrics (Rohrbach et al. 2018, "Object Hallucination in Image Captioning").

Generic over the vocabulary: the caller gives, per caption, the concepts truly in the scene
(objects, and optionally attributes such as colours), and a vocabulary mapping the words and
phrases a caption may use -- synonyms and plurals included -- to those concepts. The shapes-world
vocabulary comes from the data module; a COCO one (80 classes and their synonyms) would fit too.

- CHAIR-i: hallucinated mentions / all mentions (each mention counts, "a cube and a cube" twice);
  `chair_i_object` and `chair_i_attribute` split it by kind.
- CHAIR-s: share of captions with at least one hallucinated mention.
- object recall: scene objects mentioned / scene objects, pooled over captions.

Attributes are checked against the scene's attribute set, not bound to an object: "a red cube"
in a scene with a red sphere and a blue cube hallucinates nothing here. Negations ("no cube")
still count as mentions, as in the original CHAIR. Captions are matched word by word (longest
vocabulary phrase first), Chinese character by character, so "圆形" and "red circles" both work.
"""
from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

from polymodal.errors import ConfigError, DataError
from polymodal.eval._common import Metric, align, words_and_cjk_chars
from polymodal.registry import METRICS

KINDS = ("object", "attribute")


class ConceptLexicon:
    """Word/phrase -> (kind, concept) lookup with longest-match search in captions.

    Args:
        object_vocab: word or phrase -> object concept ("cubes" -> "cube", "box" -> "cube").
        attribute_vocab: word or phrase -> attribute concept ("crimson" -> "red"), optional.
    """

    def __init__(self, object_vocab: Mapping[str, str], attribute_vocab: Mapping[str, str] | None = None):
        self.has_attributes = attribute_vocab is not None
        self._table: dict[tuple[str, ...], tuple[str, str]] = {}
        for kind, vocab in zip(KINDS, (object_vocab, attribute_vocab or {})):
            for phrase, concept in vocab.items():
                key = tuple(words_and_cjk_chars(phrase))
                if not key:
                    raise ConfigError(f"chair: {kind} vocabulary entry {phrase!r} holds no word")
                if self._table.get(key, (kind, concept)) != (kind, concept):
                    raise ConfigError(f"chair: {phrase!r} maps to both {self._table[key]} and {(kind, concept)}; "
                                      "a word may name only one concept")
                self._table[key] = (kind, concept)
        if not self._table:
            raise ConfigError("chair: the object vocabulary is empty")
        self._longest = max(len(k) for k in self._table)

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """(kind, concept) of every vocabulary phrase in the caption, left to right, longest first."""
        tokens = words_and_cjk_chars(caption)
        found, i = [], 0
        while i < len(tokens):
            for n in range(min(self._longest, len(tokens) - i), 0, -1):
                hit = self._table.get(tuple(tokens[i:i + n]))
                if hit is not None:
                    found.append(hit)
                    i += n
                    break
            else:
                i += 1
        return found

    def canonical(self, word: str, kind: str) -> str:
        """A ground-truth word as its concept ("cubes" -> "cube"); an unknown word stays as it is."""
        hit = self._table.get(tuple(words_and_cjk_chars(word)))
        return hit[1] if hit is not None and hit[0] == kind else word


def chair_metrics(captions: Mapping[Hashable, str] | Sequence[str],
                  objects: Mapping[Hashable, Iterable[str]] | Sequence[Iterable[str]],
                  object_vocab: Mapping[str, str] | ConceptLexicon,
                  attributes: Mapping[Hashable, Iterable[str]] | Sequence[Iterable[str]] | None = None,
                  attribute_vocab: Mapping[str, str] | None = None) -> dict[str, float]:
    """CHAIR-i, CHAIR-s and object recall of captions against the scenes' true content.

    Args:
        captions: id -> caption, or a list of captions.
        objects: per caption (same ids / order), the objects in the scene (words or concepts).
        object_vocab: word or phrase -> object concept, or a prepared `ConceptLexicon`.
        attributes: per caption, the attributes in the scene; needed when attributes are scored.
        attribute_vocab: word or phrase -> attribute concept; without it attributes are ignored.
    Returns:
        {"chair_i", "chair_s", "chair_i_object", ["chair_i_attribute"], "object_recall",
         "n", "n_mentions"}, fractions in [0, 1] (CHAIR: lower is better).
    """
    lexicon = object_vocab if isinstance(object_vocab, ConceptLexicon) else ConceptLexicon(object_vocab, attribute_vocab)
    if lexicon.has_attributes and attributes is None:
        raise DataError("chair: an attribute vocabulary was given but no scene attributes; pass `attributes`")
    if isinstance(captions, Mapping):
        ids = align(captions, objects, "chair")
        if attributes is not None:
            align(captions, attributes, "chair (attributes)")
        caps = [captions[i] for i in ids]
        objs = [objects[i] for i in ids]
        attrs = [attributes[i] for i in ids] if attributes is not None else None
    else:
        caps, objs = list(captions), list(objects)
        attrs = list(attributes) if attributes is not None else None
        if len(objs) != len(caps) or (attrs is not None and len(attrs) != len(caps)):
            raise DataError(f"chair: {len(caps)} captions but {len(objs)} object sets"
                            + (f" and {len(attrs)} attribute sets" if attrs is not None else ""))
    if not caps:
        raise DataError("chair: no captions to score")

    mentions = {k: 0 for k in KINDS}
    hallucinated = {k: 0 for k in KINDS}
    bad_captions = recalled = in_scene = 0
    for k, caption in enumerate(caps):
        if isinstance(objs[k], str) or (attrs is not None and isinstance(attrs[k], str)):
            raise DataError(f"chair: scene content of caption {k} must be a collection of words, not one string")
        truth = {"object": {lexicon.canonical(w, "object") for w in objs[k]},
                 "attribute": {lexicon.canonical(w, "attribute") for w in attrs[k]} if attrs is not None else set()}
        said = lexicon.mentions(caption)
        wrong = [(kind, c) for kind, c in said if c not in truth[kind]]
        for kind, _ in said:
            mentions[kind] += 1
        for kind, _ in wrong:
            hallucinated[kind] += 1
        bad_captions += bool(wrong)
        recalled += len(truth["object"] & {c for kind, c in said if kind == "object"})
        in_scene += len(truth["object"])

    chair = chair_scores(len(caps), sum(mentions.values()), sum(hallucinated.values()), bad_captions, in_scene,
                         recalled)
    out = {"chair_i": chair["chair_i"], "chair_s": chair["chair_s"],
           "chair_i_object": _share(hallucinated["object"], mentions["object"])}
    if lexicon.has_attributes:
        out["chair_i_attribute"] = _share(hallucinated["attribute"], mentions["attribute"])
    return {**out, **{k: chair[k] for k in ("object_recall", "n", "n_mentions")}}


def chair_scores(n_captions: int, n_mentions: int, n_hallucinated: int, n_bad_captions: int, n_objects: int,
                 n_recalled: int) -> dict[str, float]:
    """CHAIR from the counts, however the mentions were read (a vocabulary here, the shapes-world
    parser with bound attributes in `shapes_metrics`): CHAIR-i = hallucinated / all mentions,
    CHAIR-s = captions with a hallucination / captions, object recall = scene objects mentioned /
    scene objects. A ratio with nothing to count is 0."""
    return {"chair_i": _share(n_hallucinated, n_mentions), "chair_s": _share(n_bad_captions, n_captions),
            "object_recall": _share(n_recalled, n_objects), "n": float(n_captions), "n_mentions": float(n_mentions)}


def _share(num: int, den: int) -> float:
    return num / den if den else 0.0


@METRICS.register("chair")
class ChairMetrics(Metric):
    """CHAIR-i, CHAIR-s and object recall (see `chair_metrics`).

    Args:
        object_vocab: word or phrase -> object concept (synonyms and plurals included).
        attribute_vocab: word or phrase -> attribute concept, optional.
    """

    main = "chair_i"
    higher_is_better = False

    def __init__(self, object_vocab: dict[str, str], attribute_vocab: dict[str, str] | None = None):
        self.lexicon = ConceptLexicon(object_vocab, attribute_vocab)

    def __call__(self, captions: Mapping[Hashable, str] | Sequence[str],
                 objects: Mapping[Hashable, Iterable[str]] | Sequence[Iterable[str]],
                 attributes: Any = None) -> dict[str, float]:
        return chair_metrics(captions, objects, self.lexicon, attributes=attributes)
