"""Explanations (polymodal.explain): every family and method gives a finite map of the image's
size in [0, 1]; on a tiny model trained here, the map follows the object the question names and
a model with re-initialised weights gives unlike maps (Adebayo et al. 2018's sanity check); the
`polymodal explain` command writes the overlay and the raw map."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import polymodal
from polymodal.errors import ConfigError
from polymodal.explain import METHODS, methods_of
from polymodal.infer.native import NativeModel
from polymodal.models.base import build
from polymodal.processing import Processor
from polymodal.registry import MODELS, OBJECTIVES
from polymodal.train.objectives import Batch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(ex, size):
    assert ex.map.shape == size and ex.map.dtype == np.float32
    assert np.isfinite(ex.map).all() and ex.map.min() >= 0 and ex.map.max() <= 1
    assert np.isfinite(ex.grid).all() and ex.grid.min() >= 0 and ex.grid.max() <= 1
    for t in ex.tokens:
        assert t.map.shape == size and np.isfinite(t.map).all() and 0 <= t.map.min() and t.map.max() <= 1


RECIPES = {"vqa-tiny": "is there a red circle?", "classifier-tiny": "a red circle", "pretrain-tiny": "a red circle",
           "clip-tiny": "a red circle", "captioner-tiny": None, "translator-tiny": "a red circle",
           "vit-gpt2-tiny": None}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_family_and_method_gives_a_normalised_map_of_the_image_size(recipe, images):
    m = polymodal.load(recipe)
    assert "explain" in m.tasks
    text = RECIPES[recipe]
    ims = images[:2]                                             # 64x64 and 40x90 (H x W)
    for method in methods_of(m):
        exs = m.explain(ims, None if text is None else [text] * len(ims), method=method, max_new_tokens=4)
        assert len(exs) == len(ims)
        for im, ex in zip(ims, exs):
            assert ex.method == method
            _check(ex, im.shape[:2])
    with pytest.raises(ConfigError, match="unknown explanation method"):
        m.explain(ims[:1], None if text is None else [text], method="lime")


def test_methods_that_need_attention_are_refused_with_the_alternatives():
    m = polymodal.load("classifier-tiny")                        # gated fusion: no attention
    assert methods_of(m) == ("grad_x_activation", "gradcam")
    with pytest.raises(ConfigError, match="grad_x_activation"):
        m.explain([np.zeros((64, 64, 3), np.uint8)], ["a"], method="relevance")


# ------------------------------------------------------------------------- a tiny trained model
SIZE = 32
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 230)}


def _scene(rnd: random.Random):
    """A red and a blue square apart from each other; boxes [x0, y0, x1, y1)."""
    while True:
        pts = [(rnd.randint(2, SIZE - 11), rnd.randint(2, SIZE - 11)) for _ in range(2)]
        if abs(pts[0][0] - pts[1][0]) + abs(pts[0][1] - pts[1][1]) >= 12:
            break
    img = Image.new("RGB", (SIZE, SIZE), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    boxes = {}
    for (x, y), (name, colour) in zip(pts, COLOURS.items()):
        draw.rectangle([x, y, x + 8, y + 8], fill=colour)
        boxes[name] = [x, y, x + 9, y + 9]
    return img, boxes


def _question(name: str) -> str:
    return f"is the {name} square on the left?"


def _batch(processor, rnd, n):
    items, texts, labels, points = [], [], [], []
    for _ in range(n):
        img, boxes = _scene(rnd)
        name = rnd.choice(list(COLOURS))
        b = boxes[name]
        items.append(img)
        texts.append(_question(name))
        labels.append(int((b[0] + b[2]) / 2 < SIZE / 2))
        centre = [(b[0] + b[2]) / 2 / SIZE, (b[1] + b[3]) / 2 / SIZE]
        points.append([[centre], [centre]])                    # both hops look at the named square
    points = torch.tensor(points)                              # (n, 2 hops, 1, 2)
    return Batch(pixel_values=processor.process_images(items), **processor.tokenize(texts),
                 labels=torch.tensor(labels), hop_points=points,
                 hop_points_mask=torch.ones(points.shape[:3], dtype=torch.bool),
                 hop_present=torch.ones(points.shape[:2], dtype=torch.bool))


def _model(seed: int):
    torch.manual_seed(seed)
    return build(MODELS, {
        "type": "fusion_encoder",
        "vision": {"type": "conv_stem", "dim": 32, "depth": 2, "width": 16, "coords": True},
        "text": {"type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "max_position_embeddings": 16},
        "fusion": {"type": "hop_attention", "dim": 32, "hops": 2},
        "labels": ["no", "yes"]}, "model")


@pytest.fixture(scope="module")
def processor():
    return Processor(image={"image_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3}, tokenizer="minilm",
                     max_length=16)


@pytest.fixture(scope="module")
def trained(processor):
    """The demo's VQA architecture in miniature, trained briefly to find the square a question names."""
    model = _model(0)
    losses = [OBJECTIVES.build({"type": "classification"}, "o"), OBJECTIVES.build({"type": "hop_attention"}, "o")]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rnd = random.Random(0)
    for _ in range(200):
        batch = _batch(processor, rnd, 24)
        loss = sum(obj(model, batch)[0] for obj in losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return NativeModel(model, processor, {"task": "vqa"})


@pytest.fixture(scope="module")
def scenes():
    rnd = random.Random(123)
    return [_scene(rnd) for _ in range(40)]


def _inside(point, box):
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


@pytest.mark.parametrize("method", ["attention", "grad_attention", "relevance"])
def test_the_map_moves_to_the_object_the_question_names(trained, scenes, method):
    imgs = [s[0] for s in scenes]
    hits, peaks = {}, {}
    for name in COLOURS:
        exs = trained.explain(imgs, [_question(name)] * len(imgs), method=method)
        hits[name] = np.mean([_inside(ex.peak(), boxes[name]) for ex, (_, boxes) in zip(exs, scenes)])
        peaks[name] = [ex.peak() for ex in exs]
    # each object is a 9x9 box in a 32x32 image: a blind guess hits it 8% of the time
    assert min(hits.values()) >= 0.8, hits
    assert np.mean([a != b for a, b in zip(peaks["red"], peaks["blue"])]) >= 0.8


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_a_reinitialised_model_gives_unlike_maps(trained, processor, scenes):
    """Adebayo et al. 2018: a map that survives randomising the weights explains nothing."""
    fresh = NativeModel(_model(1), processor, {"task": "vqa"})
    imgs = [s[0] for s in scenes]
    qs = [_question("red")] * len(imgs)
    for method in ("grad_attention", "grad_x_activation"):
        a, b = trained.explain(imgs, qs, method=method), fresh.explain(imgs, qs, method=method)
        corr = np.mean([_rank_corr(x.grid, y.grid) for x, y in zip(a, b)])
        assert corr < 0.5, (method, corr)
        pointing = np.mean([_inside(y.peak(), boxes["red"]) for y, (_, boxes) in zip(b, scenes)])
        assert pointing < 0.5, (method, pointing)


def test_explain_command_writes_the_overlay_and_the_raw_map(tmp_path, images):
    from typer.testing import CliRunner

    from polymodal.cli import app

    img = tmp_path / "scene.png"
    Image.fromarray(images[1]).save(img)
    out = tmp_path / "heat.png"
    res = CliRunner().invoke(app, ["explain", "--model", "vqa-tiny", "--image", str(img), "--question",
                                   "is there a red circle?", "--method", "relevance", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output.strip().splitlines()[-1])
    assert row["method"] == "relevance" and row["text"] == "is there a red circle?" and row["answer"]
    m = np.array(row["map"])
    assert m.shape == images[1].shape[:2] and 0 <= m.min() and m.max() <= 1
    with Image.open(out) as png:
        assert png.size[0] > 2 * images[1].shape[1]
    res = CliRunner().invoke(app, ["explain", "--model", "vqa-tiny", "--image", str(img)])
    assert res.exit_code == 2 and "exactly one of --question" in res.output


def test_every_method_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "interpretability.md").read_text()
    assert all(f"`{m}`" in doc for m in METHODS)
