"""Shapes world: determinism, pixels that match the scene record, and derived text checked
against the scene by an independent reading of every question, statement, caption and reference."""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from polymodal.data import shapes
from polymodal.data.images import load_image
from polymodal.data.shapes import COLORS, HELD_OUT, PLURAL_EN, SHAPES, SIZES
from polymodal.errors import DataError
from polymodal.eval.shapes_metrics import extract_concepts, mention_in_scene  # reads captions back

SINGULAR = {**{p: s for s, p in PLURAL_EN.items()}, **{s: s for s in SHAPES}}
WORD = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURAL_EN.items()}}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_for_any_worker_count(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shapes.generate(a, n=60, seed=7, splits="train=0.5,val=0.2,test=0.2,comp=0.1")
    shapes.generate(b, n=60, seed=7, splits="train=0.5,val=0.2,test=0.2,comp=0.1", workers=2)
    shapes.generate(c, n=60, seed=8, splits="train=0.5,val=0.2,test=0.2,comp=0.1")
    da, db, dc = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert len(da) > 60 * 1 + 20  # images, manifests, coco, vqa, class tree, meta
    assert da == db
    assert da["images/000000.png"] != dc["images/000000.png"]


def test_any_image_can_be_regenerated_alone(shapes_dir):
    rec = json.loads((shapes_dir / "captions_val.jsonl").read_text().splitlines()[3])
    index = int(rec["id"])
    image, scene, text = shapes.make_example(index, seed=3, split="val")
    assert scene == rec["scene"] and text["captions"] == rec["captions"]
    assert np.array_equal(np.asarray(image), np.asarray(load_image(shapes_dir / rec["image"])))


def test_split_sizes_and_meta(shapes_dir):
    meta = json.loads((shapes_dir / "meta.json").read_text())
    assert meta["splits"] == {"train": 120, "val": 20, "test": 30, "comp": 30}
    for split, k in meta["splits"].items():
        assert len((shapes_dir / f"captions_{split}.jsonl").read_text().splitlines()) == k
    assert len(list((shapes_dir / "images").glob("*.png"))) == 200
    assert shapes.parse_splits("train=0.8,val=0.1,test=0.1", 1000) == {"train": 800, "val": 100, "test": 100}
    assert shapes.parse_splits("train=40,test=10", 0) == {"train": 40, "test": 10}
    with pytest.raises(DataError, match="NAME=FRACTION"):
        shapes.parse_splits("train", 10)


def _scenes(shapes_dir, split):
    return [json.loads(line) for line in (shapes_dir / f"captions_{split}.jsonl").read_text().splitlines()]


def test_compositional_split_holds_the_held_out_pairs_and_only_it(shapes_dir):
    held = set(HELD_OUT)
    for split in ("train", "val", "test"):
        for rec in _scenes(shapes_dir, split):
            assert not {(o["color"], o["shape"]) for o in rec["scene"]["objects"]} & held
    comp = _scenes(shapes_dir, "comp")
    assert all({(o["color"], o["shape"]) for o in r["scene"]["objects"]} & held for r in comp)
    # nor do held-out pairs appear in the text of the other splits
    pairs = [f"{c} {s}" for c, s in HELD_OUT] + [f"{c} {PLURAL_EN[s]}" for c, s in HELD_OUT]
    for task in ("vqa", "classify", "captions"):
        text = (shapes_dir / f"{task}_train.jsonl").read_text()
        assert not [p for p in pairs if p in text]
    # every colour and every shape still occurs in training
    seen = {(o["color"], o["shape"]) for r in _scenes(shapes_dir, "train") for o in r["scene"]["objects"]}
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)


def test_pixels_match_the_scene_record():
    for index in range(40):
        rnd = random.Random(index)
        scene = shapes.sample_scene(rnd, size=64)
        clean = np.asarray(shapes.render(scene, noise=0)).astype(int)  # (H, W, 3)
        noisy = np.asarray(shapes.render(scene, noise=6, seed=index)).astype(int)
        outside = np.ones((64, 64), bool)
        boxes = [o["box"] for o in scene["objects"]]
        for o in scene["objects"]:
            x0, y0, x1, y1 = o["box"]
            outside[y0:y1, x0:x1] = False
            cx, cy = (int(v) for v in o["center"])
            patch = noisy[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
            assert np.abs(patch - o["rgb"]).max() < 12, (index, o)  # the object's colour at its centre
            inner = clean[y0:y1, x0:x1]
            differs = np.any(inner != scene["background"], axis=-1)
            # tight box: the object reaches (within 1 px) every side of its box
            assert differs[:2].any() and differs[-2:].any() and differs[:, :2].any() and differs[:, -2:].any()
        assert np.all(clean[outside] == scene["background"])  # nothing drawn outside the boxes
        for i, a in enumerate(boxes):  # objects never overlap
            for b in boxes[i + 1:]:
                assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def test_sizes_are_distinct_classes_and_canvas_scales():
    radii = {s: [] for s in SIZES}
    for index in range(30):
        for o in shapes.sample_scene(random.Random(index), size=224)["objects"]:
            radii[o["size"]].append(o["radius"])
            assert 0 <= o["box"][0] < o["box"][2] <= 224
    assert max(radii["small"]) < 0.8 * min(radii["large"])
    assert shapes.render(shapes.sample_scene(random.Random(0), size=224)).size == (224, 224)


# -- an independent reading of the generated text ------------------------------------------

REF = re.compile(r"^(?:(leftmost|rightmost|topmost|bottommost) )?(?:(small|large) )?"
                 r"(?:(" + "|".join(COLORS) + r") )?(" + "|".join(SHAPES) + r"|object)$")


def resolve(ref: str, objs: list[dict]) -> dict:
    """The one object a referring expression names (asserts it is unique)."""
    ref = ref.removeprefix("the ")
    m = REF.match(ref)
    assert m, ref
    pos, size, color, shape = m.groups()
    hits = [o for o in objs if (not size or o["size"] == size) and (not color or o["color"] == color)
            and (shape == "object" or o["shape"] == shape)]
    if pos:
        axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[pos]
        hits = [min(hits, key=lambda o: sign * o["center"][axis])]
    assert len(hits) == 1, (ref, objs)
    return hits[0]


def holds(a: dict, rel: str, b: dict) -> bool:
    dx, dy = a["center"][0] - b["center"][0], a["center"][1] - b["center"][1]
    return {"to the left of": dx < 0, "to the right of": dx > 0, "above": dy < 0, "below": dy > 0}[rel]


def count_of(phrase: str, objs: list[dict]) -> int:
    words = phrase.split()
    shape = WORD.get(words[-1])
    attrs = words[:-1]
    return sum((shape is None or o["shape"] == shape)
               and all(o["size"] == w if w in SIZES else o["color"] == w for w in attrs) for o in objs)


NUMBER = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
RELS = "to the left of|to the right of|above|below"


def answer(question: str, objs: list[dict]) -> str:
    q = question
    if m := re.match(r"^(?:What color is|What is the color of|Which color is) the (.+)\?$", q):
        return resolve(m[1], objs)["color"]
    if m := re.match(r"^(?:What shape is|What is the shape of) the (.+)\?$", q):
        return resolve(m[1], objs)["shape"]
    if m := re.match(r"^How many (.+) are there\?$", q):
        return str(count_of(m[1], objs))
    if m := re.match(r"^Is there an? (\w+) (\w+)\?$", q) or re.match(r"^Are there any (\w+) (\w+)\?$", q):
        return "yes" if any(o["color"] == m[1] and o["shape"] == SINGULAR[m[2]] for o in objs) else "no"
    if m := re.match(rf"^Is the (.+) ({RELS}) the (.+)\?$", q):
        return "yes" if holds(resolve(m[1], objs), m[2], resolve(m[3], objs)) else "no"
    if m := re.match(r"^Is the (.+) (larger|smaller) than the (.+)\?$", q):
        a, b = resolve(m[1], objs)["size"], resolve(m[3], objs)["size"]
        big = (a, b) == ("large", "small")
        return "yes" if (big if m[2] == "larger" else (a, b) == ("small", "large")) else "no"
    if m := re.match(r"^Are the (.+) and the (.+) the same size\?$", q):
        return "yes" if resolve(m[1], objs)["size"] == resolve(m[2], objs)["size"] else "no"
    raise AssertionError(f"unknown question form: {q}")


def truth(statement: str, objs: list[dict]) -> bool:
    s = statement
    if m := re.match(r"^There is an? (\w+) (\w+)\.$", s):
        return any(o["color"] == m[1] and o["shape"] == m[2] for o in objs)
    if m := re.match(r"^There (?:is|are) (\w+) (.+)\.$", s):
        return count_of(m[2], objs) == NUMBER[m[1]]
    if m := re.match(rf"^The (.+) is ({RELS}) the (.+)\.$", s):
        return holds(resolve(m[1], objs), m[2], resolve(m[3], objs))
    if m := re.match(r"^The (.+) is an? (\w+)\.$", s):
        return resolve(m[1], objs)["shape"] == m[2]
    if m := re.match(r"^The (.+) is (\w+)\.$", s):
        return resolve(m[1], objs)["color"] == m[2]
    raise AssertionError(f"unknown statement form: {s}")


def _jsonl(shapes_dir, task, split):
    return [json.loads(x) for x in (shapes_dir / f"{task}_{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("split", ["train", "comp"])
def test_every_answer_follows_from_the_scene(shapes_dir, split):
    scenes = {r["id"]: r["scene"]["objects"] for r in _scenes(shapes_dir, split)}
    qas = _jsonl(shapes_dir, "vqa", split)
    types = Counter(q["question_type"] for q in qas)
    assert set(types) == {"color", "shape", "count", "exist", "relation", "size"}
    for q in qas:
        assert q["answers"] == [answer(q["question"], scenes[q["image_id"]])], q
        assert q["answers"][0] in shapes.ANSWERS
    yesno = Counter(q["answers"][0] for q in qas if q["answer_type"] == "yes/no")
    assert 0.3 < yesno["yes"] / sum(yesno.values()) < 0.7  # balanced, so "always yes" is no baseline


def test_every_statement_label_follows_from_the_scene(shapes_dir):
    scenes = {r["id"]: r["scene"]["objects"] for r in _scenes(shapes_dir, "train")}
    recs = _jsonl(shapes_dir, "classify", "train")
    assert Counter(r["label"] for r in recs) == {"true": 120, "false": 120}
    for r in recs:
        assert truth(r["text"], scenes[r["image_id"]]) == (r["label"] == "true"), r


def test_every_reference_names_its_box(shapes_dir):
    scenes = {r["id"]: r["scene"]["objects"] for r in _scenes(shapes_dir, "train")}
    refs = _jsonl(shapes_dir, "ground", "train")
    assert len(refs) >= 0.9 * sum(len(o) for o in scenes.values())
    for r in refs:
        assert resolve(r["ref"], scenes[r["image_id"]])["box"] == r["box"]


def test_captions_mention_only_what_is_there_in_both_languages(shapes_dir):
    for rec in _scenes(shapes_dir, "train"):
        scene, objs = rec["scene"], rec["scene"]["objects"]
        assert len(rec["captions"]) == len(rec["captions_zh"]) == 5
        assert len(set(rec["captions"])) >= 4  # varied templates, not one sentence
        for caption in rec["captions"] + rec["captions_zh"]:
            mentions = extract_concepts(caption)
            assert mentions, caption
            for m in mentions:
                assert m["shape"] is None or mention_in_scene(m, scene), (caption, m)
        # caption 0 names every object with its size, colour and shape, in both languages
        full = Counter((o["size"], o["color"], o["shape"]) for o in objs)
        for caption in (rec["captions"][0], rec["captions_zh"][0]):
            got = Counter((m["size"], m["color"], m["shape"]) for m in extract_concepts(caption))
            assert got == full, caption
        # caption 2 groups objects with their counts
        grouped = Counter((o["color"], o["shape"]) for o in objs)
        for caption in (rec["captions"][2], rec["captions_zh"][2]):
            got = {(m["color"], m["shape"]): m["count"] or 1 for m in extract_concepts(caption)}
            assert got == dict(grouped), caption
        # the relation caption states a true relation
        if m := re.match(rf"^An? (\w+) (\w+) is ({RELS}) an? (\w+) (\w+)\.$", rec["captions"][3]):
            a = [o for o in objs if (o["color"], o["shape"]) == (m[1], m[2])]
            b = [o for o in objs if (o["color"], o["shape"]) == (m[4], m[5])]
            assert any(holds(x, m[3], y) for x in a for y in b)


def test_translation_pairs_are_the_parallel_captions(shapes_dir):
    caps = {r["id"]: r for r in _scenes(shapes_dir, "train")}
    pairs = _jsonl(shapes_dir, "translate", "train")
    assert len(pairs) == 5 * len(caps)
    for p in pairs:
        k = int(p["id"].rpartition("_t")[2])
        src, tgt = caps[p["image_id"]]["captions"][k], caps[p["image_id"]]["captions_zh"][k]
        assert (p["source"], p["target"]) == (src, tgt)
        # same objects on both sides
        key = lambda m: (m["color"], m["shape"])  # noqa: E731
        en = sorted(map(key, filter(lambda m: m["shape"], extract_concepts(src, "en"))))
        zh = sorted(map(key, filter(lambda m: m["shape"], extract_concepts(tgt, "zh"))))
        assert en == zh, p
    assert set("".join(p["target"] for p in pairs)) <= set(shapes.zh_alphabet())


def test_class_tree_holds_the_single_object_scenes(shapes_dir):
    singles = {r["id"]: r["scene"]["objects"][0]["shape"] for r in _scenes(shapes_dir, "train")
               if len(r["scene"]["objects"]) == 1}
    tree = {p.stem.lstrip("0") or "0": p.parent.name for p in (shapes_dir / "classes" / "train").rglob("*.png")}
    assert tree == singles and singles


def test_generate_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        shapes.generate(tmp_path, n=4)
    with pytest.raises(DataError, match="size"):
        shapes.generate(tmp_path / "new", n=4, size=8)
    out = tmp_path / "again"
    shapes.generate(out, n=12, seed=1)
    with pytest.raises(DataError, match="--overwrite"):
        shapes.generate(out, n=12, seed=1)
    before = _tree_digest(out)
    shapes.generate(out, n=6, seed=2, overwrite=True)
    shapes.generate(out, n=12, seed=1, overwrite=True)
    assert _tree_digest(out) == before
