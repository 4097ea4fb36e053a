"""The shapes-world caption parser behind the hallucination metrics: objects with their attributes
and counts bound to each, synonyms and Chinese included."""
from polymodal.data.shapes import COLORS, SHAPES, VOCAB
from polymodal.eval.shapes_metrics import extract_concepts, mention_in_scene


def test_extract_concepts_reads_synonyms_counts_and_chinese():
    got = extract_concepts("Two big red discs and no squares; the small object is teal.")
    assert got == [{"shape": "circle", "color": "red", "size": "large", "count": 2},
                   {"shape": "square", "color": None, "size": None, "count": 0},
                   {"shape": None, "color": None, "size": "small", "count": None}]
    assert extract_concepts("两个小的蓝色正方形和一个十字形") == [
        {"shape": "square", "color": "blue", "size": "small", "count": 2},
        {"shape": "cross", "color": None, "size": None, "count": 1}]
    scene = {"objects": [{"shape": "circle", "color": "red", "size": "large"}]}
    assert mention_in_scene({"shape": "circle", "color": "red", "size": None}, scene)
    assert not mention_in_scene({"shape": "circle", "color": "blue", "size": None}, scene)
    # the vocabulary covers every word the generator uses
    assert set(VOCAB["shape"]) == set(SHAPES) and set(VOCAB["color"]) == set(COLORS)
