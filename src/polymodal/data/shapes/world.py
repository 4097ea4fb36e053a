"""Shapes world: a seeded, procedural vision-language dataset with exact ground truth.

Each image is a scene of 1-6 coloured shapes on a noisy dark canvas. From the scene record
(shape, colour, size, box and centre of every object) we derive, exactly:

* captions in English and Chinese (parallel, several templates per image),
* question-answer pairs (colour, shape, count, existence, spatial relation, size),
* true/false statements for multimodal classification (image + text both needed),
* referring expressions with the referred object's box,
* English -> Chinese caption pairs for translation.

This module holds the world (shapes, colours, sizes and their English / Chinese words), its
scenes (`sample_scene`) and what is said about them (`captions`, `questions`, `statements`,
`referring`, `describe`): each sentence is drawn with its Chinese form from the same random
stream, so the two languages stay parallel. `render.py` draws a scene; `generate.py` writes a
dataset to disk. The caption parser and the hallucination metrics that read captions back
live in evaluation (`polymodal.eval.shapes_metrics`).

A compositional split (`comp`, after CLEVR-CoGenT) holds colour-shape pairs (`HELD_OUT`)
that never occur in the other splits, neither in pixels nor in text.
"""
from __future__ import annotations

import functools
import random
from collections import Counter
from typing import Sequence

from polymodal.data.shapes.render import _box


# ----------------------------------------------------------------------------------------
# The world: shapes, colours, sizes, and their words
# ----------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
#: Canonical RGB of each colour (each object gets a small jitter around it).
COLORS = {
    "red": (215, 45, 45),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 50),
    "green": (50, 170, 70),
    "cyan": (40, 200, 210),
    "blue": (45, 90, 225),
    "purple": (150, 70, 200),
    "white": (235, 235, 235),
}
SIZES = ("small", "large")
#: Object half-extent as a fraction of the canvas side, per size class.
SIZE_RADIUS = {"small": 0.075, "large": 0.13}

#: Colour-shape pairs kept out of every split but `comp` (compositional generalisation).
#: Every shape keeps 6 colours and every colour keeps >= 3 shapes in training.
HELD_OUT = (
    ("red", "triangle"), ("orange", "circle"), ("yellow", "diamond"), ("green", "cross"),
    ("cyan", "square"), ("blue", "triangle"), ("purple", "circle"), ("white", "diamond"),
    ("red", "cross"), ("blue", "square"),
)
COMPOSITIONAL_SPLIT = "comp"

#: Words of the world, canonical form first. `en` lists singular and plural forms and
#: synonyms; `zh` the Chinese words (longest first matters only for matching, handled below).
VOCAB: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "shape": {
        "circle": {"en": ("circle", "circles", "disc", "discs", "disk", "disks"), "zh": ("圆形", "圆")},
        "square": {"en": ("square", "squares"), "zh": ("正方形", "方形", "方块")},
        "triangle": {"en": ("triangle", "triangles"), "zh": ("三角形", "三角")},
        "diamond": {"en": ("diamond", "diamonds", "rhombus", "rhombuses"), "zh": ("菱形",)},
        "cross": {"en": ("cross", "crosses", "plus", "pluses"), "zh": ("十字形", "十字")},
    },
    "color": {
        "red": {"en": ("red",), "zh": ("红色", "红")},
        "orange": {"en": ("orange",), "zh": ("橙色", "橘色", "橙")},
        "yellow": {"en": ("yellow",), "zh": ("黄色", "黄")},
        "green": {"en": ("green",), "zh": ("绿色", "绿")},
        "cyan": {"en": ("cyan", "turquoise", "teal"), "zh": ("青色", "青")},
        "blue": {"en": ("blue",), "zh": ("蓝色", "蓝")},
        "purple": {"en": ("purple", "violet"), "zh": ("紫色", "紫")},
        "white": {"en": ("white",), "zh": ("白色", "白")},
    },
    "size": {
        "small": {"en": ("small", "little", "tiny"), "zh": ("小的", "小")},
        "large": {"en": ("large", "big", "huge"), "zh": ("大的", "大")},
    },
}
#: Nouns that name an object without naming its shape ("the red object").
GENERIC_NOUNS = {"en": ("object", "objects", "shape", "shapes", "thing", "things"),
                 "zh": ("物体", "图形", "东西")}
NUMBERS_EN = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
              8: "eight", 9: "nine", 10: "ten"}
NUMBERS_ZH = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五", 6: "六", 7: "七", 8: "八", 9: "九", 10: "十"}
PLURAL_EN = {s: VOCAB["shape"][s]["en"][1] for s in SHAPES}
ZH = {**{s: VOCAB["shape"][s]["zh"][0] for s in SHAPES},
      **{c: VOCAB["color"][c]["zh"][0] for c in COLORS},
      "small": "小的", "large": "大的"}
RELATIONS = ("left", "right", "above", "below")
REL_EN = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
REL_ZH = {"left": "左边", "right": "右边", "above": "上方", "below": "下方"}
#: The closed answer vocabulary of the questions (answers are also plain words, usable generatively).
ANSWERS = ("yes", "no", *COLORS, *SHAPES, *(str(k) for k in range(9)))


# ----------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------

def _allowed_combos(split: str) -> list[tuple[str, str]]:
    held = set(HELD_OUT)
    return [(c, s) for c in COLORS for s in SHAPES if (c, s) not in held or split == COMPOSITIONAL_SPLIT]


def sample_scene(rnd: random.Random, size: int = 64, split: str = "train",
                 min_objects: int = 1, max_objects: int = 6) -> dict:
    """Sample a scene record: objects with shape, colour, size, box (x0, y0, x1, y1 pixels), centre.

    Args:
        rnd: the image's own random generator.
        size: canvas side in pixels.
        split: `comp` scenes hold at least one HELD_OUT colour-shape pair; other splits none.
        min_objects, max_objects: bounds of the uniform object count (objects that cannot be
            placed without overlap are dropped, so a crowded scene may hold fewer).
    """
    combos = _allowed_combos(split)
    k = rnd.randint(min_objects, max_objects)
    picks = [rnd.choice(combos) for _ in range(k)]
    if split == COMPOSITIONAL_SPLIT and not any(p in HELD_OUT for p in picks):
        picks[rnd.randrange(k)] = rnd.choice(HELD_OUT)
    sizes = [rnd.choice(SIZES) for _ in range(k)]
    objects, placed = [], []  # placed: (cx, cy, r) used for the overlap test
    # Large objects first: they are the hard ones to fit.
    for j in sorted(range(k), key=lambda j: sizes[j] != "large"):
        color, shape = picks[j]
        for size_name in (sizes[j], "small"):
            r = SIZE_RADIUS[size_name] * size * rnd.uniform(0.92, 1.08)
            spot = None
            for _ in range(60):
                cx, cy = rnd.uniform(r + 1, size - r - 1), rnd.uniform(r + 1, size - r - 1)
                gap = max(3.0, 0.03 * size)  # boxes (rounded outwards) never touch
                if all(abs(cx - px) >= r + pr + gap or abs(cy - py) >= r + pr + gap for px, py, pr in placed):
                    spot = (cx, cy)
                    break
            if spot is not None:
                break
        if spot is None:
            continue  # no room left: drop the object rather than overlap
        placed.append((spot[0], spot[1], r))
        o = {"shape": shape, "color": color, "size": size_name,
             "center": [round(spot[0], 2), round(spot[1], 2)], "radius": round(r, 3),
             "angle": 0.0 if shape == "circle" else round(rnd.uniform(-12, 12), 2),
             "rgb": [min(255, max(0, v + rnd.randint(-18, 18))) for v in COLORS[color]]}
        objects.append({**o, "box": _box(o, size)})
    if split == COMPOSITIONAL_SPLIT and not any((o["color"], o["shape"]) in HELD_OUT for o in objects):
        # the held-out object was dropped for lack of room: recolour a placed one instead
        # (every shape has held-out colours)
        o = objects[0]
        o["color"] = rnd.choice([c for c, s in HELD_OUT if s == o["shape"]])
        o["rgb"] = [min(255, max(0, v + rnd.randint(-18, 18))) for v in COLORS[o["color"]]]
    bg = rnd.randint(18, 70)
    return {"width": size, "height": size,
            "background": [min(255, max(0, bg + rnd.randint(-8, 8))) for _ in range(3)],
            "objects": objects}


# ----------------------------------------------------------------------------------------
# Words for objects
# ----------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np_en(o: dict, attrs: Sequence[str] = ("size", "color", "shape"), det: str | None = "a",
           count: int = 1) -> str:
    """English noun phrase: 'a large red circle', 'two red circles', 'the small object'."""
    words = [o[a] for a in ("size", "color") if a in attrs]
    noun = o["shape"] if "shape" in attrs else "object"
    if count != 1:
        noun = PLURAL_EN.get(noun, noun + "s")
    phrase = " ".join(words + [noun])
    if count != 1:
        return f"{NUMBERS_EN[count]} {phrase}"
    if det == "a":
        return f"{_article(phrase)} {phrase}"
    return f"{det} {phrase}" if det else phrase


def _np_zh(o: dict, attrs: Sequence[str] = ("size", "color", "shape"), count: int | None = 1) -> str:
    """Chinese noun phrase: '一个大的红色圆形'; count=None drops the numeral ('红色圆形')."""
    words = [ZH[o[a]] for a in ("size", "color") if a in attrs]
    noun = ZH[o["shape"]] if "shape" in attrs else "物体"
    return (f"{NUMBERS_ZH[count]}个" if count else "") + "".join(words) + noun


def _join_en(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _join_zh(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def relation(a: dict, b: dict, size: int) -> list[str]:
    """The relations of object a to object b that are clear (centres >= 10% of the canvas apart)."""
    dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
    t = 0.1 * size
    rels = []
    if dx <= -t:
        rels.append("left")
    if dx >= t:
        rels.append("right")
    if dy <= -t:
        rels.append("above")
    if dy >= t:
        rels.append("below")
    return rels


OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _matches(o: dict, desc: dict) -> bool:
    return all(o[a] == v for a, v in desc.items())


_REF_SUBSETS = (("shape",), ("color", "shape"), ("size", "shape"), ("color",), ("size", "color"),
                ("size", "color", "shape"), ("size",))


@functools.lru_cache(maxsize=256)
def _subset_counts(sig: tuple[tuple[str, str, str], ...]) -> dict[tuple[str, ...], Counter]:
    """For each attribute subset, how many objects share each value tuple (sig: (size, color, shape) per object)."""
    pos = {"size": 0, "color": 1, "shape": 2}
    return {s: Counter(tuple(t[pos[a]] for a in s) for t in sig) for s in _REF_SUBSETS}


def _refer(objs: list[dict], i: int, rnd: random.Random, attrs: Sequence[str] = ("size", "color", "shape"),
           position: bool = True, canvas: int = 64) -> tuple[str, dict] | None:
    """A referring expression that picks out objs[i] uniquely, using only `attrs` (and, if
    `position`, 'leftmost'/'topmost'/...). Returns (English phrase without article, attributes)."""
    o = objs[i]
    counts = _subset_counts(tuple((p["size"], p["color"], p["shape"]) for p in objs))
    unique = [s for s in _REF_SUBSETS
              if all(a in attrs for a in s) and counts[s][tuple(o[a] for a in s)] == 1]
    if unique:
        s = rnd.choice(unique)
        return _np_en(o, s, det=None), {a: o[a] for a in s}
    if not position:
        return None
    full = tuple(a for a in ("size", "color", "shape") if a in attrs)
    same = [p for p in objs if _matches(p, {a: o[a] for a in full})]
    for word, axis, sign in (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottommost", 1, -1)):
        # objs[i] must beat every look-alike on that axis by a visible margin
        if all(p is o or sign * (p["center"][axis] - o["center"][axis]) >= 0.08 * canvas for p in same):
            return f"{word} " + _np_en(o, full, det=None), {**{a: o[a] for a in full}, "position": word}
    return None


# ----------------------------------------------------------------------------------------
# Derived text: captions, questions, statements, referring expressions
# ----------------------------------------------------------------------------------------

def captions(scene: dict, rnd: random.Random) -> tuple[list[str], list[str]]:
    """Five parallel (English, Chinese) captions of the scene, from five templates."""
    objs, size = scene["objects"], scene["width"]
    ltr = sorted(objs, key=lambda o: o["center"][0])
    n = len(objs)
    en, zh = [], []
    # 1. every object, left to right, with sizes
    en.append(_cap(_join_en([_np_en(o) for o in ltr])) + ".")
    zh.append(_join_zh([_np_zh(o) for o in ltr]) + "。")
    # 2. the count, then every object in random order without sizes
    shuffled = rnd.sample(objs, n)
    noun_en, noun_zh = rnd.choice([("shape", "图形"), ("object", "物体")])
    attrs = ("color", "shape")
    if n == 1:
        en.append(f"There is one {noun_en}: {_np_en(objs[0], attrs)}.")
    else:
        en.append(f"There are {NUMBERS_EN[n]} {noun_en}s: {_join_en([_np_en(o, attrs) for o in shuffled])}.")
    zh.append(f"图中有{NUMBERS_ZH[n]}个{noun_zh}：{_join_zh([_np_zh(o, attrs) for o in shuffled])}。")
    # 3. grouped by colour and shape: "two red circles and a blue square"
    groups = Counter((o["color"], o["shape"]) for o in ltr)
    parts_en = [_np_en({"color": c, "shape": s}, attrs, count=k) for (c, s), k in groups.items()]
    parts_zh = [_np_zh({"color": c, "shape": s}, attrs, count=k) for (c, s), k in groups.items()]
    en.append(f"An image with {_join_en(parts_en)}.")
    zh.append(f"一张有{_join_zh(parts_zh)}的图片。")
    # 4. one clear spatial relation (or the single object)
    pairs = [(a, b, r) for a in objs for b in objs if a is not b for r in relation(a, b, size)]
    if pairs:
        a, b, r = rnd.choice(pairs)
        en.append(f"{_cap(_np_en(a, attrs))} is {REL_EN[r]} {_np_en(b, attrs)}.")
        zh.append(f"{_np_zh(a, attrs, None)}在{_np_zh(b, attrs, None)}的{REL_ZH[r]}。")
    else:
        o = max(objs, key=lambda o: o["radius"])
        en.append(f"{_cap(_np_en(o))} on a dark background.")
        zh.append(f"深色背景上有{_np_zh(o)}。")
    # 5. left to right, without sizes
    en.append(f"From left to right: {_join_en([_np_en(o, attrs) for o in ltr])}.")
    zh.append(f"从左到右依次是：{_join_zh([_np_zh(o, attrs) for o in ltr])}。")
    return en, zh


def _count_desc(rnd: random.Random, objs: list[dict], combos: list[tuple[str, str]]) -> dict:
    kind = rnd.choice(["all", "color", "shape", "color_shape", "size_shape"])
    if kind == "all":
        return {}
    o = rnd.choice(objs)
    if rnd.random() < 0.25:  # sometimes ask about something absent (answer 0)
        c, s = rnd.choice(combos)
        o = {"color": c, "shape": s, "size": rnd.choice(SIZES)}
    keys = {"color": ("color",), "shape": ("shape",), "color_shape": ("color", "shape"),
            "size_shape": ("size", "shape")}[kind]
    return {k: o[k] for k in keys}


def _desc_plural(desc: dict) -> str:
    words = [desc[a] for a in ("size", "color") if a in desc]
    return " ".join(words + [PLURAL_EN[desc["shape"]] if "shape" in desc else "objects"])


def questions(scene: dict, rnd: random.Random, split: str = "train") -> list[dict]:
    """Question-answer pairs of six types, each answered from the scene record.

    Returns a list of {"question", "answer", "question_type", "answer_type"} (answer_type as
    in VQAv2: "yes/no", "number" or "other").
    """
    objs, size = scene["objects"], scene["width"]
    combos = _allowed_combos(split)
    out: list[dict] = []

    def add(q, a, qtype, hops):
        # hops: per object phrase of the question, in the order it is named, the indices of the
        # scene objects it refers to (GQA-style grounding of the question; may be empty)
        atype = "yes/no" if a in ("yes", "no") else "number" if a.isdigit() else "other"
        out.append({"question": q, "answer": a, "question_type": qtype, "answer_type": atype,
                    "objects": [list(h) for h in hops]})

    order = rnd.sample(range(len(objs)), len(objs))
    # colour: refer without naming the colour
    for i in order:
        ref = _refer(objs, i, rnd, attrs=("size", "shape"), canvas=size)
        if ref:
            q = rnd.choice(["What color is the {}?", "What is the color of the {}?", "Which color is the {}?"])
            add(q.format(ref[0]), objs[i]["color"], "color", [[i]])
            break
    # shape: refer without naming the shape
    for i in order:
        ref = _refer(objs, i, rnd, attrs=("size", "color"), canvas=size)
        if ref:
            q = rnd.choice(["What shape is the {}?", "What is the shape of the {}?"])
            add(q.format(ref[0]), objs[i]["shape"], "shape", [[i]])
            break
    # count
    desc = _count_desc(rnd, objs, combos)
    k = sum(_matches(o, desc) for o in objs)
    add(f"How many {_desc_plural(desc)} are there?", str(k), "count",
        [[n for n, o in enumerate(objs) if _matches(o, desc)]])
    # existence, balanced yes / no
    present = sorted({(o["color"], o["shape"]) for o in objs})
    absent = [c for c in combos if c not in present]
    if rnd.random() < 0.5 or not absent:
        (c, s), a = rnd.choice(present), "yes"
    else:
        (c, s), a = rnd.choice(absent), "no"
    matched = [n for n, o in enumerate(objs) if (o["color"], o["shape"]) == (c, s)]
    if rnd.random() < 0.5:
        add(f"Is there {_article(c)} {c} {s}?", a, "exist", [matched])
    else:
        add(f"Are there any {c} {PLURAL_EN[s]}?", a, "exist", [matched])
    # spatial relation between two uniquely named objects, balanced yes / no
    pairs = [(i, j, r) for i in order for j in order if i != j for r in relation(objs[i], objs[j], size)]
    rnd.shuffle(pairs)
    for i, j, r in pairs:
        ra = _refer(objs, i, rnd, position=False)
        rb = _refer(objs, j, rnd, position=False)
        if ra and rb:
            asked, a = (r, "yes") if rnd.random() < 0.5 else (OPPOSITE[r], "no")
            add(f"Is the {ra[0]} {REL_EN[asked]} the {rb[0]}?", a, "relation", [[i], [j]])
            break
    # size comparison between two objects named without their sizes
    pairs = [(i, j) for i in order for j in order if i < j]
    rnd.shuffle(pairs)
    for i, j in pairs:
        ra = _refer(objs, i, rnd, attrs=("color", "shape"), position=False)
        rb = _refer(objs, j, rnd, attrs=("color", "shape"), position=False)
        if ra and rb:
            si, sj = objs[i]["size"], objs[j]["size"]
            a, b, hops = ra[0], rb[0], [[i], [j]]
            if rnd.random() < 0.5:
                a, b, si, sj, hops = b, a, sj, si, [[j], [i]]
            # every form with its answer; pick the answer first, so yes and no are equally likely
            forms = [(f"Are the {a} and the {b} the same size?", si == sj),
                     (f"Is the {a} larger than the {b}?", (si, sj) == ("large", "small")),
                     (f"Is the {a} smaller than the {b}?", (si, sj) == ("small", "large"))]
            want = rnd.random() < 0.5
            q, truth = rnd.choice([f for f in forms if f[1] == want])
            add(q, "yes" if truth else "no", "size", hops)
            break
    return out


def statements(scene: dict, rnd: random.Random, split: str = "train") -> list[dict]:
    """One true and one false statement about the scene, in random order: {"text", "label"}."""
    objs, size = scene["objects"], scene["width"]
    combos = _allowed_combos(split)
    present = {(o["color"], o["shape"]) for o in objs}
    made: dict[bool, str] = {}
    kinds = ["exist", "count", "relation", "color", "shape"]
    for _ in range(40):
        if len(made) == 2:
            break
        want = rnd.choice([b for b in (True, False) if b not in made])
        kind = rnd.choice(kinds)
        text = None
        if kind == "exist":
            pool = sorted(present) if want else [c for c in combos if c not in present]
            if pool:
                c, s = rnd.choice(pool)
                text = f"There is {_article(c)} {c} {s}."
        elif kind == "count":
            desc = _count_desc(rnd, objs, combos)
            k = sum(_matches(o, desc) for o in objs)
            if not want:
                k = rnd.choice([v for v in (k - 1, k + 1, k + 2) if v >= 0])
            noun = _desc_plural(desc)
            if k == 1:
                noun = " ".join([desc[a] for a in ("size", "color") if a in desc] + [desc.get("shape", "object")])
            text = f"There {'is' if k == 1 else 'are'} {NUMBERS_EN[k]} {noun}."
        elif kind == "relation":
            pairs = [(i, j, r) for i in range(len(objs)) for j in range(len(objs)) if i != j
                     for r in relation(objs[i], objs[j], size)]
            if pairs:
                i, j, r = rnd.choice(pairs)
                ra, rb = _refer(objs, i, rnd, position=False), _refer(objs, j, rnd, position=False)
                if ra and rb:
                    text = f"The {ra[0]} is {REL_EN[r if want else OPPOSITE[r]]} the {rb[0]}."
        elif kind in ("color", "shape"):
            i = rnd.randrange(len(objs))
            other = [a for a in ("size", "color", "shape") if a != kind]
            ref = _refer(objs, i, rnd, attrs=other, position=False)
            if ref:
                value = objs[i][kind]
                if not want:
                    # a wrong value that still names an allowed pair (no held-out pair in text)
                    pool = [c if kind == "color" else s for c, s in combos
                            if (s == objs[i]["shape"] if kind == "color" else c == objs[i]["color"])
                            and (c if kind == "color" else s) != value]
                    if not pool:
                        continue
                    value = rnd.choice(pool)
                text = f"The {ref[0]} is {value}." if kind == "color" else \
                    f"The {ref[0]} is {_article(value)} {value}."
        if text:
            made[want] = text
    out = [{"text": t, "label": "true" if b else "false"} for b, t in made.items()]
    rnd.shuffle(out)
    return out


def referring(scene: dict, rnd: random.Random) -> list[dict]:
    """A referring expression for every object that can be named uniquely: {"ref", "box"}."""
    objs = scene["objects"]
    out = []
    for i, o in enumerate(objs):
        ref = _refer(objs, i, rnd, canvas=scene["width"])
        if ref:
            out.append({"ref": f"the {ref[0]}", "box": list(o["box"])})
    return out


def describe(scene: dict, rnd: random.Random, split: str = "train") -> dict:
    """All derived text of a scene: captions (en, zh), qa, statements, refs."""
    en, zh = captions(scene, rnd)
    return {"captions": en, "captions_zh": zh, "qa": questions(scene, rnd, split),
            "statements": statements(scene, rnd, split), "refs": referring(scene, rnd)}


#: What a detection phrase names: its attributes, per kind ("none": a phrase of one of the
#: other kinds that matches no object of the image).
PHRASE_KINDS = {"color": ("color",), "shape": ("shape",), "color_shape": ("color", "shape"),
                "size_shape": ("size", "shape")}


def detection_phrases(scene: dict, rnd: random.Random, split: str = "train") -> list[dict]:
    """Text-queried detection queries of a scene: one phrase of each kind in `PHRASE_KINDS` that
    names objects of the image ("red objects", "circles", "red circles", "small circles"), with
    the boxes of every object it matches, and one phrase that matches nothing (kind "none").

    Phrases only name colour-shape pairs allowed in `split` (the held-out pairs appear in the
    compositional split alone). Returns [{"text", "boxes", "phrase_kind"}].
    """
    objs = scene["objects"]
    combos = _allowed_combos(split)
    out = []
    for kind, attrs in PHRASE_KINDS.items() if objs else ():
        o = rnd.choice(objs)
        desc = {a: o[a] for a in attrs}
        out.append({"text": _desc_plural(desc), "phrase_kind": kind,
                    "boxes": [list(p["box"]) for p in objs if _matches(p, desc)]})
    for _ in range(40):  # something absent: an allowed description no object fits
        attrs = PHRASE_KINDS[rnd.choice(list(PHRASE_KINDS))]
        c, s = rnd.choice(combos)
        desc = {a: v for a, v in (("color", c), ("shape", s), ("size", rnd.choice(SIZES))) if a in attrs}
        if not any(_matches(p, desc) for p in objs):
            out.append({"text": _desc_plural(desc), "phrase_kind": "none", "boxes": []})
            break
    return out


def zh_alphabet() -> list[str]:
    """Every character the Chinese captions of shapes world can contain (for a target tokenizer)."""
    chars = set("图中有个物体形：、和一张的图片在左右边上下方从到依次是。深色背景只")
    for words in list(ZH.values()) + list(NUMBERS_ZH.values()) + list(REL_ZH.values()):
        chars.update(words)
    return sorted(chars)
