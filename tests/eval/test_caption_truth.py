"""Captions read as claims about a scene (`caption_true`), and the retrieval ceiling they give:
every caption the generator writes is true of its own scene, hand-made lies are false, what the
parser cannot read is unknown, and the ceiling matches hand-computed values."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from polymodal.data.shapes import world
from polymodal.eval.shapes_metrics import caption_claim, caption_true, retrieval_ceiling


def _obj(color, shape, size, x, y):
    return {"color": color, "shape": shape, "size": size, "center": [x, y]}


def _scene(*objects, width=64):
    return {"width": width, "height": width, "objects": list(objects)}


#: left to right: a large red circle, a small blue square (above the circle), a small blue square
SCENE = _scene(_obj("red", "circle", "large", 10, 40), _obj("blue", "square", "small", 30, 10),
               _obj("blue", "square", "small", 50, 42))


def test_every_generated_caption_is_true_of_its_scene():
    seen = Counter()
    for i in range(400):
        rnd = random.Random(f"truth:{i}")
        split = "comp" if i % 4 == 0 else "train"
        scene = world.sample_scene(rnd, 64, split, max_objects=8 if i % 2 else 6)
        en, _ = world.captions(scene, rnd)
        for k, caption in enumerate(en):
            assert caption_true(caption, scene) is True, (caption, scene["objects"])
            claim = caption_claim(caption)
            seen[k, claim.kind, claim.relation or claim.ordered, claim.total is not None] += 1
        seen["noun", en[1].split()[3].rstrip(":s")] += 1
        seen["background", en[3].endswith("background.")] += 1
    # every template in every one of its variants was read
    assert min(seen["noun", "shape"], seen["noun", "object"], seen["background", True], seen["background", False]) > 0
    assert all(seen[3, "relation", r, False] for r in world.RELATIONS)
    assert seen[0, "objects", False, False] == seen[1, "objects", False, True] == seen[2, "objects", False, False] \
        == seen[4, "objects", True, False] == 400


@pytest.mark.parametrize("caption", [
    "A large red circle, a small blue square and a small blue square.",
    "A small blue square, a large red circle and a small blue square.",   # a listing claims no order
    "There are three shapes: a blue square, a red circle and a blue square.",
    "There are three objects: a red circle, a blue square and a blue square.",
    "An image with a red circle and two blue squares.",
    "From left to right: a red circle, a blue square and a blue square.",
    "A blue square is above a red circle.",
    "A red circle is to the left of a blue square.",
    "A blue square is to the right of a red circle.",
    "A big red disc, a tiny blue square and a little blue square.",        # synonyms
])
def test_true_captions(caption):
    assert caption_true(caption, SCENE) is True


@pytest.mark.parametrize("caption", [
    "A large green circle, a small blue square and a small blue square.",  # wrong colour
    "A small red circle, a small blue square and a small blue square.",    # wrong size
    "An image with a red circle and three blue squares.",                  # wrong count
    "An image with a red circle and a blue square.",                       # one square left out
    "There are two shapes: a red circle and a blue square.",
    "There are four shapes: a red circle, a blue square and a blue square.",   # count against list
    "An image with a red circle, two blue squares and a cyan cross.",      # an extra object
    "A blue square is below a red circle.",                                # swapped relation
    "A red circle is to the right of a blue square.",
    "A blue square is to the left of a red circle.",
    "A red circle is above a blue square.",
    "From left to right: a blue square, a red circle and a blue square.",  # wrong order
    "A large red circle on a dark background.",                            # not the only object
])
def test_false_captions(caption):
    assert caption_true(caption, SCENE) is False


def test_relations_use_the_worlds_ten_percent_rule():
    # 6.4 px is 10% of a 64-px canvas: 6.0 px apart is no clear relation, 6.5 px is
    near = _scene(_obj("red", "circle", "small", 20, 20), _obj("blue", "square", "small", 26, 40))
    far = _scene(_obj("red", "circle", "small", 20, 20), _obj("blue", "square", "small", 26.5, 40))
    caption = "A red circle is to the left of a blue square."
    assert caption_true(caption, near) is False and caption_true(caption, far) is True
    assert caption_true("A red circle is above a blue square.", near) is True


def test_left_to_right_allows_either_order_at_the_same_x():
    scene = _scene(_obj("red", "circle", "small", 20, 10), _obj("blue", "square", "small", 20, 40))
    for caption in ("From left to right: a red circle and a blue square.",
                    "From left to right: a blue square and a red circle."):
        assert caption_true(caption, scene) is True


@pytest.mark.parametrize("caption", [
    "A red circle is bigger than a blue square.",        # a relation the world does not state
    "A red circle near a blue square.",
    "There are 3 shapes: a red circle, a blue square and a blue square.",
    "An image with a red circle and no squares.",        # an absence inside a listing
    "Two blue squares are to the right of a red circle.",
    "A red red circle.",
    "A red circle, a blue square and some blue squares.",
    "Three squares were drawn.",
])
def test_what_the_parser_cannot_read_is_unknown_not_true(caption):
    assert caption_claim(caption) is None
    assert caption_true(caption, SCENE) is None


def test_ceiling_hand_computed():
    a = _scene(_obj("red", "circle", "large", 20, 20))
    b = _scene(_obj("red", "circle", "small", 30, 30))
    c = _scene(_obj("red", "circle", "small", 10, 30), _obj("blue", "square", "small", 40, 30))
    texts = ["A large red circle.", "An image with a red circle.",          # a: fits a; fits a and b
             "A small red circle.", "An image with a red circle.",          # b: fits b; fits a and b
             "A red circle is to the left of a blue square.",               # c: fits c only
             "The red circle is to the left of the blue square, twice."]    # unread: its own image only
    out = retrieval_ceiling(texts, [0, 0, 1, 1, 2, 2], [a, b, c], ks=(1, 2))
    # text -> image: 1 / (images the text fits), averaged over the texts
    assert out["ceiling_t2i_r1"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2 + 1 + 1) / 6)
    assert out["ceiling_t2i_r2"] == 1.0
    # image -> text: a ties its 2 own texts with b's "An image with a red circle": P(own first) = 2/3
    assert out["ceiling_i2t_r1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert out["ceiling_i2t_r2"] == 1.0
    assert out["n_unread_texts"] == 1.0
    # a caption false of its own image still counts as fitting it (the ceiling never drops below 1/m)
    lone = retrieval_ceiling(["A blue square."], [0], [a], ks=(1,))
    assert lone["ceiling_t2i_r1"] == lone["ceiling_i2t_r1"] == 1.0 and lone["n_unread_texts"] == 0.0
