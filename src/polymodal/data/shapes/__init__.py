"""Shapes world: a seeded, procedural vision-language dataset with exact ground truth.

    world.py     shapes, colours, sizes and their words; scenes; captions, questions,
                 statements, referring expressions (English and Chinese, parallel)
    render.py    drawing a scene, object boxes
    generate.py  a dataset on disk: `generate(out, n, seed)`, `preview(png)`

`polymodal data generate shapes --out DIR` runs `generate`; docs/data.md describes the files.
The caption parser behind the hallucination metrics lives in `polymodal.eval.shapes_metrics`.
"""
from polymodal.data.shapes.generate import (DEFAULT_SPLITS, FORMAT_VERSION, RECORD_FILES, generate,  # noqa: F401
                                            make_example, parse_splits, preview)
from polymodal.data.shapes.render import render  # noqa: F401
from polymodal.data.shapes.world import (ANSWERS, COLORS, COMPOSITIONAL_SPLIT, HELD_OUT, PLURAL_EN,  # noqa: F401
                                         SHAPES, SIZES, VOCAB, captions, describe, questions, referring,
                                         sample_scene, statements, zh_alphabet)

__all__ = ["SHAPES", "COLORS", "SIZES", "VOCAB", "HELD_OUT", "ANSWERS", "COMPOSITIONAL_SPLIT", "PLURAL_EN",
           "sample_scene", "render", "captions", "questions", "statements", "referring", "describe",
           "zh_alphabet", "make_example", "generate", "preview", "parse_splits", "DEFAULT_SPLITS",
           "FORMAT_VERSION", "RECORD_FILES"]
