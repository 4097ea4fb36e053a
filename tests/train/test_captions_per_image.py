"""`data.captions_per_image`: several captions of one image in a batch, the image encoded once,
with the same loss as encoding the image once per caption."""
import re

import pytest
import torch

import polymodal
from _helpers import processor_for
from polymodal.errors import ConfigError
from polymodal.tasks import get_task
from polymodal.train import train
from polymodal.train.trainer import losses, build_objectives


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from polymodal.data.shapes import generate

    out = tmp_path_factory.mktemp("shapes") / "data"
    generate(out, n=30, size=32, splits={"train": 24, "val": 6}, workers=1)
    return out


def test_each_image_brings_k_distinct_captions_and_one_pixel_row(shapes):
    from polymodal.data.dataset import build_dataset

    model = polymodal.create_model("captioner-tiny")
    collate = get_task("captioning").collator(processor_for("captioner-tiny"), model)
    ds = build_dataset(f"shapes:{shapes}:captions", "train")
    items = [ds[0], ds[1], ds[2]]
    collate.captions_per_image = 3
    batch = collate(items)
    assert batch["pixel_values"].shape[0] == 3 and batch["decoder_input_ids"].shape[0] == 9
    assert batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    texts = processor_for("captioner-tiny").decode(batch["decoder_input_ids"])
    for i, x in enumerate(items):   # three different captions of the image itself
        mine = texts[3 * i:3 * i + 3]
        assert len(set(mine)) == 3
        own = {re.sub(r"\W", "", c.lower()) for c in x["captions"]}
        assert all(re.sub(r"\W", "", t) in own for t in mine), (mine, x["captions"])
    assert collate(items)["decoder_input_ids"].equal(batch["decoder_input_ids"])  # seeded choice


def test_encoding_once_gives_the_loss_of_encoding_per_caption(shapes):
    from polymodal.data.dataset import build_dataset

    torch.manual_seed(0)
    model = polymodal.create_model("captioner-tiny").eval()
    proc = processor_for("captioner-tiny")
    collate = get_task("captioning").collator(proc, model)
    collate.captions_per_image = 2
    ds = build_dataset(f"shapes:{shapes}:captions", "train")
    batch = collate([ds[0], ds[1], ds[2]])
    objectives = build_objectives([{"type": "lm"}], proc, model, "test")
    shared, _ = losses(objectives, model, dict(batch))
    copied = {k: v for k, v in batch.items() if k != "image_index"}
    copied["pixel_values"] = batch["pixel_values"][batch["image_index"]]   # one image row per caption
    plain, _ = losses(objectives, model, copied)
    assert torch.allclose(shared, plain, atol=1e-5)
    shared.backward()
    g_shared = [p.grad.clone() for p in model.vision.parameters()]
    model.zero_grad()
    plain.backward()
    g_plain = [p.grad for p in model.vision.parameters()]
    assert len(g_plain) > 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_shared, g_plain))


def test_train_with_captions_per_image_and_refusal_elsewhere(shapes, tmp_path):
    cfg = {"task": "captioning", "model": {"recipe": "captioner-tiny",
                                           "processor": {"image": {"image_size": 32}}},
           "data": {"train": f"shapes:{shapes}", "captions_per_image": 3},
           "optim": {"max_steps": 2, "batch_size": 4}, "checkpointing": {"every": 0},
           "logging": {"every": 1, "progress": False, "plot": False, "tensorboard": False},
           "precision": "no", "output_dir": str(tmp_path / "run")}
    res = train(cfg)
    assert res.step == 2 and all(r["loss"] > 0 for r in res.history if "loss" in r)
    cfg["task"], cfg["model"]["recipe"], cfg["output_dir"] = "retrieval", "clip-tiny", str(tmp_path / "run2")
    with pytest.raises(ConfigError, match="captions_per_image"):
        train(cfg)
