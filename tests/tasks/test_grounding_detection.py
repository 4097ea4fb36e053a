"""Grounding and text-queried detection: box arithmetic, Hungarian matching and the set loss on
hand-made cases with known answers, COCO AP on known predictions, boxes drawn on the right
pixels, the loaded model's methods and `polymodal ground`, bad input, and a tiny detector that
learns to place boxes in a short training."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import polymodal
from polymodal.checkpoint import save_checkpoint
from polymodal.data.collate import make_collator
from polymodal.errors import DataError
from polymodal.eval.detection import detection_metrics
from polymodal.models.boxes import cxcywh_to_xyxy, elementwise_iou, generalized_iou, pairwise_iou
from polymodal.models.detector import DetectorOutput
from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor
from polymodal.train.objectives import SetMatching, hungarian_match

runner = CliRunner()


# ------------------------------------------------------------------------------ box arithmetic
def test_iou_and_generalized_iou_of_known_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 2.0]])
    iou, _ = pairwise_iou(a, b)
    # overlap 1 / union 7; identical; disjoint
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    giou = generalized_iou(a, b)
    # enclosing boxes: 3x3 = 9 (union 7), 2x2 (union 4), 4x2 = 8 (union 4 + 2 = 6)
    torch.testing.assert_close(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, -0.25]]))
    torch.testing.assert_close(elementwise_iou(a.expand(3, 4), b), iou[0])
    torch.testing.assert_close(cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])), torch.tensor([0.4, 0.3, 0.6, 0.7]))


def test_hungarian_match_finds_the_cheapest_assignment():
    # 3 predictions, 2 targets: greedy (take the 1 of row 0 first) would cost 1 + 9 = 10; optimal 2 + 2 = 4
    cost = torch.tensor([[1.0, 2.0], [2.0, 9.0], [9.0, 9.0]])
    rows, cols = hungarian_match(cost)
    assert cols.tolist() == [0, 1] and rows.tolist() == [1, 0]
    empty_rows, _ = hungarian_match(torch.zeros(5, 0))
    assert len(empty_rows) == 0


class _Fixed(torch.nn.Module):
    """A stand-in detector whose output is given: the loss is then known exactly."""

    box = match = None

    def __init__(self, logits, boxes):
        super().__init__()
        self.out = DetectorOutput(logits, boxes)

    def forward(self, **_):
        return self.out


def test_set_matching_loss_is_zero_on_exact_boxes_and_matches_the_right_tokens():
    targets = [torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.8]]), torch.zeros(0, 4)]
    boxes = torch.tensor([[0.5, 0.5, 0.7, 0.7], [0.6, 0.6, 0.9, 0.8], [0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 1.0, 1.0]])
    boxes = torch.stack([boxes, boxes])                                   # (2, 4 tokens, 4)
    confident = torch.tensor([[-20.0, 20.0, 20.0, -20.0], [-20.0] * 4])   # tokens 1, 2 say "match"; none in pair 2
    batch = {"target_boxes": targets, "pixel_values": None, "input_ids": None, "attention_mask": None}
    loss, logs = SetMatching()(_Fixed(confident, boxes), batch)
    assert float(logs["l1"]) == 0 and float(logs["giou"]) < 1e-6 and float(loss) < 1e-6
    assert float(logs["top1"]) == 1.0 and float(logs["empty_fp"]) == 0.0
    # the same boxes behind the wrong tokens: matching still pairs boxes exactly, but the scores are wrong
    wrong = torch.tensor([[20.0, -20.0, -20.0, 20.0], [-20.0] * 4])
    loss2, logs2 = SetMatching()(_Fixed(wrong, boxes), batch)
    assert float(logs2["match"]) > 1.0 and float(logs2["top1"]) == 0.0
    # a box off by 0.1 on one side: L1 = 0.1 over 2 target boxes, weighted 5
    shifted = boxes.clone()
    shifted[0, 2, 2] += 0.1
    _, logs3 = SetMatching()(_Fixed(confident, shifted), batch)
    assert float(logs3["l1"]) == pytest.approx(0.05, abs=1e-5) and float(logs3["giou"]) > 0
    # pair 2 matches nothing: a confident token there is a false positive
    fp = confident.clone()
    fp[1, 0] = 5.0
    _, logs4 = SetMatching()(_Fixed(fp, boxes), batch)
    assert float(logs4["empty_fp"]) == 1.0


# --------------------------------------------------------------------------------- COCO AP
def test_detection_ap_from_cocoeval_on_known_predictions():
    refs = {"a": [[0, 0, 10, 10], [20, 20, 30, 30]], "b": [[5, 5, 15, 15]], "c": []}
    perfect = {"a": [{"box": [0, 0, 10, 10], "score": 0.9}, {"box": [20, 20, 30, 30], "score": 0.8}],
               "b": [{"box": [5, 5, 15, 15], "score": 0.7}], "c": []}
    kinds = {"a": "color", "b": "shape", "c": "none"}
    m = detection_metrics(perfect, refs, kinds)
    assert m["AP@0.5"] == pytest.approx(1.0) and m["AP@[.5:.95]"] == pytest.approx(1.0)
    assert m["AP@0.5[phrase_kind=color]"] == pytest.approx(1.0) and m["fp_per_image@0.5[empty]"] == 0
    assert "AP@0.5[phrase_kind=none]" not in m and m["n_empty"] == 1 and m["n"] == 3
    # a confident box where nothing matches ranks above every true box: precision at the first recall drops
    noisy = {**perfect, "c": [{"box": [1, 1, 5, 5], "score": 0.95}]}
    m2 = detection_metrics(noisy, refs, kinds)
    assert m2["fp_per_image@0.5[empty]"] == 1 and m2["AP@0.5"] < 1.0
    # one of three boxes missed: AP@0.5 is 2/3 of the way up the precision-recall curve
    missed = {**perfect, "b": []}
    assert detection_metrics(missed, refs)["AP@0.5"] == pytest.approx(2 / 3, abs=0.01)
    # boxes off by half their size fail IoU 0.5
    off = {k: [{"box": [b[0] + 5, b[1], b[2] + 5, b[3]], "score": 0.9} for b in v] for k, v in refs.items()}
    assert detection_metrics(off, refs)["AP@0.5"] == 0.0
    with pytest.raises(DataError, match="list of"):
        detection_metrics({"a": [[0, 0, 10, 10]]}, refs)


# -------------------------------------------------------------------------------- drawing
def test_boxes_are_drawn_on_the_right_pixels():
    from polymodal.infer.draw import draw_boxes

    img = draw_boxes(Image.new("RGB", (12, 12)), [[2, 3, 7, 9]])
    a = np.asarray(img).sum(-1) > 0
    # the outline covers columns 2..6 and rows 3..8 ([x0, x1) pixel ranges); nothing else
    expected = np.zeros((12, 12), bool)
    expected[3, 2:7] = expected[8, 2:7] = expected[3:9, 2] = expected[3:9, 6] = True
    assert (a == expected).all()
    big = np.asarray(draw_boxes(Image.new("RGB", (12, 12)), [[2, 3, 7, 9]], scale=4)).sum(-1) > 0
    assert big.shape == (48, 48) and big[12, 8] and big[35, 27] and not big[20, 16]


# --------------------------------------------------------------------- records and collator
def test_shapes_detection_phrases_name_every_matching_object():
    from polymodal.data.shapes.world import detection_phrases, sample_scene

    rnd = random.Random(0)
    for _ in range(30):
        scene = sample_scene(rnd)
        phrases = detection_phrases(scene, rnd)
        kinds = [p["phrase_kind"] for p in phrases]
        assert kinds[:4] == ["color", "shape", "color_shape", "size_shape"]
        for p in phrases:
            words = p["text"].split()
            named = [o["box"] for o in scene["objects"]
                     if all(w in (o["color"], o["size"], o["shape"] + "s", "objects") or w == o["shape"] + "es"
                            for w in words)]
            assert sorted(map(list, named)) == sorted(p["boxes"]), p
        assert kinds[-1] != "none" or phrases[-1]["boxes"] == []


def test_detection_collator_takes_references_and_phrases_alike():
    proc = Processor.from_spec(get_recipe("grounder-tiny")["processor"])
    collate = make_collator("detect", proc)
    im = Image.new("RGB", (40, 20))
    batch = collate([{"id": "r", "image_id": "1", "image": im, "ref": "the red circle", "box": [0, 0, 20, 10]},
                     {"id": "d", "image_id": "1", "image": im, "text": "squares", "boxes": [], "phrase_kind": "none"},
                     {"id": "e", "image_id": "2", "image": im, "text": "red things", "boxes": [[10, 5, 40, 20]]}])
    assert batch["pixel_values"].shape[0] == 2 and batch["image_index"].tolist() == [0, 0, 1]
    torch.testing.assert_close(batch["target_boxes"][0], torch.tensor([[0.0, 0.0, 0.5, 0.5]]))
    assert batch["target_boxes"][1].shape == (0, 4)
    torch.testing.assert_close(batch["target_boxes"][2], torch.tensor([[0.25, 0.25, 1.0, 1.0]]))
    assert batch["phrase_kinds"] == ["ref", "none", None]


# --------------------------------------------------------------------- loaded model and CLI
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = polymodal.create_model("grounder-tiny")
    path = tmp_path_factory.mktemp("grounder") / "ckpt"
    save_checkpoint(path, model, Processor.from_spec(get_recipe("grounder-tiny")["processor"]),
                    recipe="grounder-tiny", task="grounding")
    return path


def test_loaded_detector_grounds_and_detects(ckpt):
    m = polymodal.load(ckpt)
    assert {"ground", "detect"} <= set(m.tasks)
    img = Image.new("RGB", (80, 40), (30, 30, 30))
    [g] = m.ground([img], ["the red circle"])
    assert len(g["box"]) == 4 and 0 <= g["score"] <= 1
    x0, y0, x1, y1 = g["box"]
    assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 40                      # pixels of this image
    [all_boxes] = m.detect([img], ["the red circle"], threshold=0.0)
    # every token's box; the best of them is the grounded one
    assert len(all_boxes) == 64 and all_boxes[0] == {"box": g["box"], "score": pytest.approx(g["score"])}
    assert [b["score"] for b in all_boxes] == sorted((b["score"] for b in all_boxes), reverse=True)
    assert m.detect([img], ["red circles"], threshold=1.0) == [[]]
    with pytest.raises(DataError, match="text is empty"):
        m.ground([img], ["  "])
    with pytest.raises(ValueError, match="one text per image"):
        m.ground([img, img], ["a"])
    with pytest.raises(polymodal.errors.ConfigError, match="between 0 and 1"):
        m.detect([img], ["a"], threshold=2)


def test_ground_command_prints_boxes_and_draws_them(ckpt, tmp_path):
    from polymodal.cli import app

    Image.new("RGB", (64, 64), (40, 40, 40)).save(tmp_path / "img.png")
    out = tmp_path / "boxes.png"
    res = runner.invoke(app, ["ground", "--model", str(ckpt), "--image", str(tmp_path / "img.png"),
                              "--text", "the blue square", "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output.splitlines()[-1])
    assert row["text"] == "the blue square" and len(row["boxes"]) == 1 and set(row["boxes"][0]) == {"box", "score"}
    drawn = Image.open(out)
    assert drawn.size == (256, 256) and drawn.getextrema() != Image.open(tmp_path / "img.png").convert("RGB").getextrema()
    res = runner.invoke(app, ["ground", "--model", str(ckpt), "--image", str(tmp_path / "img.png"),
                              "--text", "squares", "--threshold", "0", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.output.splitlines()[-1])["boxes"]) == 64
    res = runner.invoke(app, ["ground", "--model", str(ckpt), "--image", str(tmp_path / "img.png"), "--text", " ",
                              "--json"])
    assert res.exit_code == 1 and "text is empty" in json.loads(res.output.splitlines()[-1])["error"]


# -------------------------------------------------------------------------------- bad input
def _world(tmp_path, lines):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return f"jsonl:{tmp_path / 'd.jsonl'}"


def test_a_box_outside_its_image_is_a_counted_skip(ckpt, tmp_path):
    from polymodal.data.dataset import RecordDataset
    from polymodal.data.formats import open_dataset
    from polymodal.eval.run import evaluate
    from polymodal.tasks import get_task

    spec = _world(tmp_path, [
        {"id": "ok", "image": "a.png", "text": "circles", "boxes": [[1, 1, 9, 9]]},
        {"id": "out", "image": "a.png", "text": "circles", "boxes": [[1, 1, 90, 9]]},
        {"id": "flip", "image": "a.png", "text": "circles", "boxes": [[9, 1, 1, 9]]},
        {"id": "ref_out", "image": "a.png", "ref": "the circle", "box": [0, 0, 40, 10]},
        {"id": "none", "image": "a.png", "text": "squares", "boxes": []},
        {"id": "empty", "image": "a.png", "text": "", "boxes": []}])
    ds = RecordDataset(open_dataset(spec), on_error="drop", task=get_task("detection"))
    kept = [ds[i]["id"] for i in range(len(ds)) if ds[i] is not None]
    assert kept == ["ok", "none"]
    kinds = ds.skips.by_kind()
    assert kinds["box outside image"][0] == 2 and "lies outside the 32x32 image" in kinds["box outside image"][1]
    assert kinds["bad field"][0] == 1 and "text is empty" in kinds["missing field"][1]
    result = evaluate("detection", spec, model=str(ckpt))
    assert result["n"] == 2 and result["skipped"]["count"] == 4 and "box outside image" in result["skipped"]["summary"]


# ---------------------------------------------------------------------------------- learning
def test_a_tiny_detector_learns_to_place_boxes():
    """Forty small steps on generated scenes: the best-scoring box of a phrase lands on an object
    it names (IoU >= 0.5) far more often than before training."""
    from polymodal.data.shapes import make_example
    from polymodal.train.objectives import Batch

    torch.manual_seed(0)
    model = polymodal.create_model("grounder-tiny")
    collate = make_collator("detect", Processor.from_spec(get_recipe("grounder-tiny")["processor"]))

    def records(lo, hi):
        out = []
        for i in range(lo, hi):
            image, _, text = make_example(i, seed=3, max_objects=2)
            out += [{"id": f"{i}_{k}", "image_id": str(i), "image": image, **p}
                    for k, p in enumerate(text["phrases"]) if p["boxes"]]
        return out

    train, held_out = records(0, 64), collate(records(1000, 1024))
    objective = SetMatching()

    def top1():
        model.eval()
        with torch.no_grad():
            return float(objective(model, held_out)[1]["top1"])

    before = top1()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rnd = random.Random(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # small matrices: a second thread only adds contention (12 s vs minutes)
    try:
        for _ in range(40):
            model.train()
            loss, _ = objective(model, Batch(collate(rnd.sample(train, 16))))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    after = top1()
    assert after > before + 0.25, (before, after)


def test_detector_object_heads_train_with_the_object_attributes_objective():
    from polymodal.train.objectives import Batch, ObjectAttributes

    torch.manual_seed(0)
    model = polymodal.create_model("grounder-tiny", object_attributes={"color": ["red", "blue"]}, attribute_tokens=True)
    collate = make_collator("detect", Processor.from_spec(get_recipe("grounder-tiny")["processor"]))
    im = Image.new("RGB", (64, 64))
    objects = [{"box": [0, 0, 8, 8], "color": "red"}, {"box": [40, 40, 56, 56], "color": "blue"}]
    batch = Batch(collate([{"id": "a", "image_id": "1", "image": im, "text": "red objects", "boxes": [[0, 0, 8, 8]],
                            "objects": objects},
                           {"id": "b", "image_id": "1", "image": im, "ref": "the blue object", "box": [40, 40, 56, 56],
                            "objects": objects}]))
    out = batch.forward(model)
    assert out.object_logits["color"].shape == (2, 64, 3)
    loss, logs = ObjectAttributes()(model, batch)
    match, _ = SetMatching()(model, batch)
    (loss + match).backward()
    assert torch.isfinite(loss) and model.attribute_tokens.weight.grad.abs().sum() > 0
    assert model.object_heads["color"].weight.grad.abs().sum() > 0


def test_coco_instance_annotations_read_as_detection_records(tmp_path):
    from polymodal.data.formats import open_dataset

    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "traffic light"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
                           {"id": 3, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2], "iscrowd": 1}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    recs = {r["id"]: r for r in open_dataset(f"coco_instances:{tmp_path / 'instances.json'}")}
    assert recs["1_c3"]["text"] == "cat" and recs["1_c3"]["boxes"] == [[10, 20, 40, 60], [0, 0, 5, 5]]
    assert recs["1_c7"]["boxes"] == [] and recs["1_c7"]["phrase_kind"] == "none"
    assert recs["2_c7"]["boxes"] == [] and recs["1_c3"]["image"] == str(tmp_path / "a.jpg")  # crowd regions left out
    present = list(open_dataset({"format": "coco_instances", "path": str(tmp_path / "instances.json"), "absent": "none"}))
    assert [r["id"] for r in present] == ["1_c3"]
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="not a COCO instances file"):
        list(open_dataset(f"coco_instances:{tmp_path / 'captions.json'}"))
