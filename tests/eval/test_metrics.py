"""Metric checks against hand-computed values, reference implementations, and perfect vs shuffled
predictions. The caption tests start Java (PTB tokenizer ~0.2 s, METEOR ~10 s once per module)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from polymodal.errors import ConfigError, DataError, PolymodalError
from polymodal.eval.metrics import (
    METRICS, CaptionMetrics, binary_auroc, box_iou, caption_metrics, chair_metrics, classification_metrics,
    grounding_metrics, ideal_recalls, normalize_answer, ptb_tokenize, retrieval_metrics, translation_metrics,
    vqa_accuracy, vqa_score,
)
from polymodal.eval.captioning import spice_missing

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java")

# Five images with three references each; the shuffled predictions describe another image.
CAPTION_REFS = {
    "img1": ["A man riding a horse on a beach.", "A person rides a brown horse along the shore.",
             "A man on horseback near the ocean."],
    "img2": ["Two dogs playing with a ball in the grass.", "A pair of dogs chase a red ball.",
             "Dogs play fetch on a lawn."],
    "img3": ["A plate of food with broccoli and rice.", "A dinner plate with rice and vegetables.",
             "Broccoli and rice on a white plate."],
    "img4": ["A red double decker bus on a city street.", "A bus driving down a busy road.",
             "A large red bus in traffic."],
    "img5": ["A cat sleeping on a laptop keyboard.", "A cat lying on a computer.",
             "A kitten asleep on a keyboard."],
}
IDS = list(CAPTION_REFS)
PERFECT = {k: v[0] for k, v in CAPTION_REFS.items()}
SHUFFLED = {k: CAPTION_REFS[IDS[(i + 2) % len(IDS)]][0] for i, k in enumerate(IDS)}


# ----------------------------------------------------------------------------- captioning

@pytest.fixture(scope="module")
def caption_scores():
    """Perfect and shuffled captions scored by one CaptionMetrics (one METEOR start)."""
    if shutil.which("java") is None:
        pytest.skip("caption metrics need Java")
    with CaptionMetrics() as metric:
        perfect = metric(predictions=PERFECT, references=CAPTION_REFS)
        shuffled = metric(predictions=SHUFFLED, references=CAPTION_REFS)
        proc = metric._meteor._proc
    return perfect, shuffled, proc


def test_captioning_perfect_scores_max_and_shuffled_scores_low(caption_scores):
    perfect, shuffled, _ = caption_scores
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"):
        assert perfect[key] == pytest.approx(1.0, abs=1e-6), key
        assert shuffled[key] < 0.3, key
    # CIDEr-D has no fixed maximum (it is x10 and IDF-weighted); it must separate the two widely.
    assert perfect["cider_d"] > 2.0 and shuffled["cider_d"] < 0.1
    assert perfect["n"] == shuffled["n"] == 5


def test_meteor_process_is_closed(caption_scores):
    *_, proc = caption_scores
    assert proc.poll() is not None


@needs_java
def test_spice_is_skipped_without_jars_and_required_raises():
    if not spice_missing():
        pytest.skip("SPICE jars installed")
    out = caption_metrics({"img1": "a man on a horse"}, CAPTION_REFS, meteor=False)
    assert "spice" not in out and out["n"] == 1
    with pytest.raises(PolymodalError, match="SPICE"):
        caption_metrics({"img1": "a man on a horse"}, CAPTION_REFS, meteor=False, spice=True)


@needs_java
def test_ptb_tokenize_matches_coco():
    sentences = ["A man (riding) a horse.", "", "Don't stop!", "two\nlines", "Café, “naïve” -- 3.5 kg..."]
    tokens = ptb_tokenize(sentences)
    assert tokens[:4] == ["a man -lrb- riding -rrb- a horse", "", "do n't stop", "two lines"]
    # Same output as pycocoevalcap's own wrapper (which writes a temp file inside the package).
    from pycocoevalcap.tokenizer import ptbtokenizer

    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("pycocoevalcap's tokenizer needs a writable package directory")
    coco = ptbtokenizer.PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences) if s
                                                 and "\n" not in s})
    assert {i: tokens[i] for i in coco} == {i: v[0] for i, v in coco.items()}


@needs_java
def test_captioning_chinese_is_character_level():
    refs = {1: ["一个男人在海滩上骑马。", "一个人骑着棕色的马"], 2: ["两只狗在草地上玩球", "狗在追一个红球"],
            3: ["一盘米饭和西兰花", "白盘子里有米饭和蔬菜"]}
    perfect = caption_metrics({k: v[0] for k, v in refs.items()}, refs, lang="zh")
    shuffled = caption_metrics({1: refs[2][0], 2: refs[3][0], 3: refs[1][0]}, refs, lang="zh")
    assert set(perfect) == {"bleu_1_char", "bleu_2_char", "bleu_3_char", "bleu_4_char", "rouge_l_char",
                            "cider_d_char", "n"}
    assert perfect["bleu_4_char"] == pytest.approx(1.0, abs=1e-6)
    assert shuffled["bleu_4_char"] < 0.1 and shuffled["cider_d_char"] < 0.1 * perfect["cider_d_char"]


def test_captioning_rejects_unknown_ids_and_languages():
    with pytest.raises(DataError, match="no reference"):
        caption_metrics({"nope": "a cat"}, CAPTION_REFS, meteor=False)
    with pytest.raises(ConfigError, match="lang"):
        CaptionMetrics(lang="fr")


# ----------------------------------------------------------------------------- VQA

@pytest.mark.parametrize("raw, normal", [
    ("two", "2"), ("a dog", "dog"), ("yes.", "yes"), ("dont", "don't"), ("Yes!", "yes"),
    ("The Dog", "dog"), ("1,000", "1000"), ("3.5", "3.5"), ("t-shirt", "t shirt"), ("  no \n", "no"),
])
def test_vqa_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_ten_choose_nine_averaging(matching, expected):
    # m of 10 annotators match: leaving one of them out leaves m-1 matches, leaving another leaves m.
    refs = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_score("cat", refs) == pytest.approx(expected)


def test_vqa_any_reference_count_works():
    assert vqa_score("the dog.", ["dog"]) == 1.0        # one reference: exact match (the prediction normalised)
    assert vqa_score("cat", ["dog"]) == 0.0
    assert vqa_score("cat", ["cat", "dog"]) == 0.5      # two: leave-one-out, one match needed


# Hand-made cases for the official evaluation script, GT-Vision-Lab/VQA
# PythonEvaluationTools/vqaEvaluation/vqaEval.py, VQAEval.evaluate(). The expected numbers follow its
# code: "official" is the script as the VQA challenge server and LAVIS run it (the repository until
# March 2021): the prediction always gets processPunctuation + processDigitArticle, the references
# only processPunctuation and only when they disagree (len(set(gtAnswers)) > 1). "official_2021" is
# the repository after commit a013f00: both sides stripped, then both fully processed on
# disagreement and neither otherwise. Per question: the mean over the 10 leave-one-out subsets of
# min(1, matches / 3), so m matching references of 10 give (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10.
OFFICIAL_CASES = [
    # prediction, references, official, official_2021
    ("two", ["2"] * 10, 1.0, 0.0),                       # "two" -> "2"; the agreeing references stay "2"
    ("two", ["two"] * 10, 0.0, 1.0),                     # agreeing references are not processed: "2" != "two"
    ("the two dogs", ["2 dogs"] * 10, 1.0, 0.0),         # number word and article: "2 dogs"
    ("the two dogs", ["2 dogs"] * 2 + ["two dogs"] * 8, 0.6, 1.0),   # references get punctuation only: 2 match
    ("2", ["two"] * 9 + ["2"], 0.3, 1.0),                # a reference "two" beside "2": 1 match of 10
    ("two", ["two"] * 9 + ["2"], 0.3, 1.0),              # the same once the prediction becomes "2"
    ("yes.", ["yes"] * 10, 1.0, 0.0),                    # 2021: agreeing references, nothing processed
    ("Yes", ["yes"] * 10, 1.0, 0.0),                     # ... not even lower-cased
    (" yes\n", ["yes"] * 10, 1.0, 1.0),                  # newline and spaces stripped first
    ("yes", ["yes\n"] * 10, 0.0, 1.0),                   # before 2021 the references were not stripped
    ("hot-dog", ["hot dog"] * 10, 1.0, 0.0),             # a mark inside a word becomes a space
    ("hot-dog -", ["hot dog"] * 10, 0.0, 0.0),           # "-" next to a space: every "-" deleted -> "hotdog"
    ("hot dog", ["hot dog"] * 4 + ["hot-dog"] * 6, 1.0, 1.0),   # disagreeing references: "hot-dog" -> "hot dog"
    ("1,000", ["1000"] * 10, 1.0, 0.0),                  # digit-comma-digit: all punctuation deleted
    ("1,000", ["1,000"] * 10, 0.0, 1.0),                 # ... but agreeing references keep their comma
    ("1000", ["1,000"] * 9 + ["1000"], 1.0, 1.0),        # disagreeing ones lose it
    ("3.5", ["3.5"] * 10, 1.0, 1.0),                     # a period before a digit stays
    ("dont", ["don't"] * 10, 1.0, 0.0),                  # contraction restored
    ("dont", ["dont"] * 8 + ["don't"] * 2, 0.6, 1.0),    # references keep "dont": 2 match
    ("a dog", ["dog"] * 10, 1.0, 0.0),
    ("dog", ["a dog"] * 10, 0.0, 0.0),                   # articles are dropped from the prediction only
    ("cat", ["cat"] * 2 + ["dog"] * 8, 0.6, 0.6),
]


@pytest.mark.parametrize("prediction, references, official, official_2021", OFFICIAL_CASES)
def test_vqa_score_reproduces_the_official_script(prediction, references, official, official_2021):
    assert vqa_score(prediction, references) == pytest.approx(official)           # the default rule
    assert vqa_score(prediction, references, rule="official") == pytest.approx(official)
    assert vqa_score(prediction, references, rule="official_2021") == pytest.approx(official_2021)


def test_vqa_normalized_rule_and_unknown_rules():
    # Both sides fully normalised: for free-text references that no VQA pipeline normalised.
    assert vqa_score("two", ["two"] * 10, rule="normalized") == 1.0
    assert vqa_score("2 dogs", ["Two dogs."], rule="normalized") == 1.0
    assert vqa_score("2 dogs", ["Two dogs."]) == 0.0      # official: the single reference is compared as written
    assert vqa_score("dog", ["a dog"] * 10, rule="normalized") == 1.0
    with pytest.raises(ConfigError, match="unknown rule 'exact'.*official, official_2021, normalized"):
        vqa_score("yes", ["yes"], rule="exact")
    with pytest.raises(ConfigError, match="unknown rule"):
        METRICS.build({"type": "vqa", "rule": "exact"}, "eval")
    normalized = METRICS.build({"type": "vqa", "rule": "normalized"}, "eval")
    assert normalized({1: "two"}, {1: ["two"] * 10})["accuracy"] == 1.0


def test_vqa_accuracy_per_type_and_shuffled():
    refs = {1: ["yes"] * 10, 2: ["2"] * 6 + ["3"] * 4, 3: ["red"] * 2 + ["blue"] * 8, 4: ["no"] * 10}
    qtypes = {1: "is the", 2: "how many", 3: "what color is the", 4: "is the"}
    atypes = {1: "yes/no", 2: "number", 3: "other", 4: "yes/no"}
    preds = {1: "Yes", 2: "two", 3: "red", 4: "yes"}
    out = vqa_accuracy(preds, refs, question_types=qtypes, answer_types=atypes)
    assert out["accuracy"] == pytest.approx((1 + 1 + 0.6 + 0) / 4)
    assert out["accuracy[answer_type=yes/no]"] == pytest.approx(0.5)
    assert out["n[answer_type=yes/no]"] == 2
    assert out["accuracy[answer_type=other]"] == pytest.approx(0.6)
    assert out["accuracy[question_type=how many]"] == pytest.approx(1.0)
    perfect = vqa_accuracy({q: max(r, key=r.count) for q, r in refs.items()}, refs)   # majority answers
    shuffled = vqa_accuracy({1: "2", 2: "blue", 3: "no", 4: "red"}, refs)
    assert perfect["accuracy"] == 1.0 and shuffled["accuracy"] == 0.0


# ----------------------------------------------------------------------------- retrieval

def test_retrieval_identity_is_perfect():
    out = retrieval_metrics(np.eye(20), np.arange(20))
    assert out["i2t_r1"] == out["t2i_r1"] == out["r_mean"] == 1.0
    assert out["i2t_median_rank"] == out["t2i_mean_rank"] == 1.0


def test_retrieval_hand_computed_with_several_texts_per_image():
    sim = np.array([[0.9, 0.1, 0.8, 0.2],      # image 0 owns texts 0, 1: best own 0.9 -> rank 1
                    [0.5, 0.6, 0.4, 0.7],      # image 1 owns text 2 (0.4): 3 others above -> rank 4
                    [0.1, 0.2, 0.3, 0.25]])    # image 2 owns text 3 (0.25): 0.3 above -> rank 2
    out = retrieval_metrics(sim, [0, 0, 1, 2], ks=(1, 2, 5))
    assert out["i2t_r1"] == pytest.approx(1 / 3) and out["i2t_r2"] == pytest.approx(2 / 3)
    assert out["i2t_mean_rank"] == pytest.approx(7 / 3) and out["i2t_median_rank"] == 2
    # Text ranks: text0 1, text1 3 (0.1 is its column's lowest), text2 2, text3 2.
    assert out["t2i_r1"] == 0.25 and out["t2i_r2"] == 0.75
    assert out["t2i_mean_rank"] == 2 and out["t2i_median_rank"] == 2


def test_retrieval_permutation_and_ties():
    perm = np.array([2, 0, 1, 4, 3])
    sim = np.eye(5)[:, perm]                     # text j matches image perm[j] best
    assert retrieval_metrics(sim, perm)["t2i_r1"] == 1.0
    shuffled = retrieval_metrics(sim, np.arange(5))
    assert shuffled["i2t_r1"] == shuffled["t2i_r1"] == 0.0
    # Ties count against the model: a constant matrix must not look perfect.
    flat = retrieval_metrics(np.ones((4, 4)), np.arange(4))
    assert flat["i2t_r1"] == flat["t2i_r1"] == 0.0 and flat["t2i_mean_rank"] == 4


def test_retrieval_takes_bf16_tensors_and_checks_shapes():
    torch = pytest.importorskip("torch")
    out = retrieval_metrics(torch.eye(6, dtype=torch.bfloat16), torch.arange(6))
    assert out["t2i_r1"] == 1.0
    with pytest.raises(DataError, match="text_to_image"):
        retrieval_metrics(np.eye(3), [0, 1])


def test_ideal_recalls_are_the_expectation_of_random_tie_breaking():
    # fits: which images each text is true of; the ideal model scores those 1, the rest 0, and
    # breaks ties at random -- its mean recalls over many draws approach the closed form
    rng = np.random.default_rng(0)
    gt = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    fits = rng.random((6, 10)) < 0.35
    want = ideal_recalls(fits, gt, ks=(1, 2, 5))
    fits[gt, np.arange(10)] = True
    draws = [retrieval_metrics(fits + 0.5 * rng.random(fits.shape), gt, ks=(1, 2, 5)) for _ in range(3000)]
    for key, value in want.items():
        got = np.mean([d[key.removeprefix("ceiling_")] for d in draws])
        assert got == pytest.approx(value, abs=0.02), key
    # hand-computed: image 0 ties its own 2 texts with 2 others -> P(own first) 1/2, in top 2: 1 - 1/6
    fits = np.zeros((2, 4), bool)
    fits[0] = True
    out = ideal_recalls(fits, [0, 0, 1, 1], ks=(1, 2))
    assert out["ceiling_i2t_r1"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["ceiling_i2t_r2"] == pytest.approx((5 / 6 + 1) / 2)
    assert out["ceiling_t2i_r1"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 2) / 4)


# ----------------------------------------------------------------------------- classification, grounding

def test_classification_hand_computed():
    out = classification_metrics([0, 0, 1, 1, 2], predictions=[0, 1, 1, 1, 0])
    assert out["accuracy"] == pytest.approx(3 / 5)
    # F1 per class: 0 -> 2*1/(2+1+1) = .5, 1 -> 2*2/(4+1) = .8, 2 -> 0.
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert "auroc" not in out
    strings = classification_metrics(["cat", "dog", "dog"], predictions=["cat", "dog", "cat"])
    assert strings["accuracy"] == pytest.approx(2 / 3)


def test_auroc_known_cases():
    assert binary_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Ties count 1/2: positives {0.5, 0.9} vs negatives {0.5, 0.2} -> (0.5 + 1 + 1 + 1) / 4.
    assert binary_auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert binary_auroc([0, 1], [3.0, 3.0]) == 0.5


def test_auroc_agrees_with_sklearn_on_tied_scores():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)     # rounding makes many ties
    assert binary_auroc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)


def test_classification_perfect_and_shuffled_scores():
    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    logits = np.stack([1 - y, y], 1) + rng.normal(scale=0.1, size=(200, 2))
    perfect = classification_metrics(y, scores=logits)
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["auroc"] == 1.0
    shuffled = classification_metrics(y, scores=rng.permutation(logits))
    assert 0.3 < shuffled["accuracy"] < 0.7 and 0.3 < shuffled["auroc"] < 0.7


def test_grounding_iou_and_accuracy():
    pred = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 2, 2], [5, 5, 4, 4]]
    gold = [[0, 0, 10, 10], [5, 0, 15, 10], [1, 1, 3, 3], [0, 0, 10, 10]]
    np.testing.assert_allclose(box_iou(pred, gold), [1.0, 1 / 3, 1 / 7, 0.0])   # inverted box: no area
    out = grounding_metrics(pred, gold)
    assert out["accuracy@0.5"] == 0.25
    assert out["mean_iou"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)
    with pytest.raises(DataError, match="x1 < x0"):
        grounding_metrics(gold, pred)


# ----------------------------------------------------------------------------- translation

def test_translation_perfect_shuffled_and_chinese_tokenizer():
    refs = ["the cat sat on the mat", "a dog runs in the park", "two birds fly over the lake"]
    perfect = translation_metrics(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    shuffled = translation_metrics(refs[1:] + refs[:1], refs)
    assert shuffled["bleu"] < 10 and shuffled["chrf"] < 30
    # Several references, their number varying; a mapping keyed by id.
    multi = translation_metrics({1: "a cat sat on a mat"}, {1: ["the cat sat on the mat", "a cat sat on a mat"]})
    assert multi["bleu"] == pytest.approx(100.0)
    # Chinese has no spaces: with "13a" the whole sentence is one token, "zh" splits characters.
    hyp, ref = ["一只红色的猫坐在垫子上"], ["一只黑色的猫坐在垫子上"]
    assert translation_metrics(hyp, ref, target_lang="en")["bleu"] == 0.0
    assert translation_metrics(hyp, ref, target_lang="zh")["bleu"] > 40


# ----------------------------------------------------------------------------- CHAIR

OBJECTS = {"cube": "cube", "cubes": "cube", "box": "cube", "sphere": "sphere", "spheres": "sphere",
           "ball": "sphere", "cylinder": "cylinder", "traffic cone": "cone", "cone": "cone"}
ATTRIBUTES = {"red": "red", "crimson": "red", "blue": "blue", "green": "green"}


def test_chair_hand_computed():
    captions = ["A crimson box and two blue spheres.",           # all true
                "a green cylinder beside a red traffic cone",    # green, cylinder hallucinated
                "Three cubes."]                                  # true, misses the sphere
    objects = [["cube", "sphere"], ["cubes", "traffic cone"], ["cube", "sphere"]]
    attributes = [["red", "blue"], ["red"], []]
    out = chair_metrics(captions, objects, OBJECTS, attributes=attributes, attribute_vocab=ATTRIBUTES)
    # Mentions: objects cube, sphere | cylinder, cone | cube (5); attributes red, blue | green, red (4).
    assert out["n_mentions"] == 9
    assert out["chair_i"] == pytest.approx(2 / 9)
    assert out["chair_i_object"] == pytest.approx(1 / 5)
    assert out["chair_i_attribute"] == pytest.approx(1 / 4)
    assert out["chair_s"] == pytest.approx(1 / 3)
    assert out["object_recall"] == pytest.approx(4 / 6)


def test_chair_chinese_and_registry_build():
    metric = METRICS.build({"type": "chair", "object_vocab": {"立方体": "cube", "球": "sphere"}})
    out = metric(captions={"a": "一个红色的立方体和一个球。"}, objects={"a": ["cube"]})
    assert out["chair_i"] == 0.5 and out["chair_s"] == 1.0 and out["object_recall"] == 1.0
    assert metric.higher_is_better is False
    with pytest.raises(ConfigError, match="only one concept"):
        chair_metrics(["x"], [[]], {"orange": "orange"}, attributes=[[]], attribute_vocab={"orange": "orange"})


# ----------------------------------------------------------------------------- registry contract

EXAMPLES = {
    "captioning": ({"meteor": False}, dict(predictions={"img1": "a man on a horse"}, references=CAPTION_REFS)),
    "vqa": ({}, dict(predictions={1: "yes"}, references={1: ["yes"] * 10})),
    "retrieval": ({"ks": [1, 5]}, dict(similarity=np.eye(3), text_to_image=[0, 1, 2])),
    "classification": ({}, dict(references=[0, 1], scores=[[0.2, 0.8], [0.9, 0.1]])),
    "translation": ({"target_lang": "de"}, dict(predictions=["ein Hund"], references=[["ein Hund"]])),
    "grounding": ({"iou_threshold": 0.7}, dict(predictions=[[0, 0, 1, 1]], references=[[0, 0, 1, 1]])),
    "detection": ({"threshold": 0.3}, dict(predictions={"q": [{"box": [0, 0, 4, 4], "score": 0.9}], "e": []},
                                           references={"q": [[0, 0, 4, 4]], "e": []})),
    "chair": ({"object_vocab": OBJECTS}, dict(captions=["a cube"], objects=[["cube"]])),
    "shapes_chair": ({}, dict(captions={"a": "A small red circle and a blue square."},
                              scenes={"a": {"objects": [{"shape": "circle", "color": "red", "size": "small"}]}})),
    "shapes_retrieval_ceiling": ({"ks": [1, 5]}, dict(
        texts=["A red circle.", "A red circle."], text_to_image=[0, 1],
        scenes=[{"width": 64, "objects": [{"shape": "circle", "color": "red", "size": s, "center": [9, 9]}]}
                for s in ("small", "large")])),
}


@pytest.mark.parametrize("name", METRICS.names())
def test_every_registered_metric_returns_flat_floats_with_its_main_key(name):
    if name == "captioning" and shutil.which("java") is None:
        pytest.skip("caption metrics need Java")
    assert name in EXAMPLES, f"add an example for the new metric {name!r}"
    spec, inputs = EXAMPLES[name]
    with METRICS.build({"type": name, **spec}) as metric:
        out = metric(**inputs)
    assert out and all(isinstance(k, str) and type(v) is float for k, v in out.items())
    assert metric.main in out
    with pytest.raises(ConfigError, match="unknown key"):
        METRICS.build({"type": name, "no_such_option": 1, **spec})
