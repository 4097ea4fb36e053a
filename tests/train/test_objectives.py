"""The objectives compute what their papers say, on real tiny models."""
import math

import pytest
import torch
import torch.nn.functional as F

import polymodal
from _helpers import processor_for
from _synthetic import collator, records
from polymodal.train.objectives import ITC, LM, MLM, VQAClassification, hard_negatives


def _batch(recipe, task, n=8, **kw):
    return collator(processor_for(recipe))(records(task, n, **kw))


def test_itc_is_symmetric_infonce_with_the_learned_temperature():
    torch.manual_seed(0)
    model = polymodal.create_model("clip-tiny").eval()
    batch = _batch("clip-tiny", "retrieval")
    loss, logs = ITC()(model, dict(batch))
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.T
    target = torch.arange(8)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["temperature"].item() == pytest.approx(0.07, rel=1e-4)
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0  # the temperature learns


def test_itc_does_not_count_another_caption_of_the_same_image_as_a_negative():
    torch.manual_seed(0)
    model = polymodal.create_model("clip-tiny").eval()
    batch = _batch("clip-tiny", "retrieval")
    same = dict(batch, image_ids=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.T
    logits[0, 1] = logits[1, 0] = float("-inf")  # rows 0 and 1 show one image
    target = torch.arange(8)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert ITC()(model, same)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def test_hard_negatives_never_pair_an_image_with_itself_and_follow_similarity():
    torch.manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 3, 4])
    sim = torch.zeros(6, 6)
    sim[0, 2] = sim[1, 2] = 5.0  # caption 2 looks like images 0 and 1: their hard negative
    counts = torch.zeros(6)
    for _ in range(200):
        rows, neg_txt, neg_img = hard_negatives(sim, ids)
        assert rows.tolist() == list(range(6))
        assert (ids[neg_txt] != ids[rows]).all() and (ids[neg_img] != ids[rows]).all()
        counts += torch.bincount(neg_txt[:2], minlength=6)
    assert counts[2] > 0.8 * counts.sum()
    rows, _, _ = hard_negatives(None, torch.tensor([7, 7, 7]))
    assert len(rows) == 0  # one image only: no negatives at all


def test_mlm_masking_follows_bert():
    torch.manual_seed(0)
    proc = processor_for("pretrain-tiny")
    mlm = MLM(proc, mask_prob=0.15)
    tok = proc.tokenize(["a red circle left of a blue square and a green triangle"] * 400 + ["a"])
    ids, labels = mlm.mask(tok["input_ids"], tok["attention_mask"])
    special = torch.isin(tok["input_ids"], torch.tensor(proc.tokenizer.all_special_ids))
    picked = labels != -100
    assert not (picked & (special | (tok["attention_mask"] == 0))).any()  # never [CLS]/[SEP]/[PAD]
    real = (~special & (tok["attention_mask"] == 1)).sum()
    assert picked.sum() / real == pytest.approx(0.15, abs=0.01)
    masked = (ids[picked] == proc.tokenizer.mask_token_id).float().mean()
    kept = (ids[picked] == tok["input_ids"][picked]).float().mean()
    assert masked == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1, abs=0.03)
    assert (labels[picked] == tok["input_ids"][picked]).all()


def test_lm_predicts_the_next_token_and_ignores_padding():
    torch.manual_seed(0)
    model = polymodal.create_model("captioner-tiny").eval()
    batch = _batch("captioner-tiny", "captioning", n=4)
    loss, logs = LM()(model, dict(batch))
    dec, dmask = batch["decoder_input_ids"], batch["decoder_attention_mask"]
    logits = model(batch["pixel_values"], dec, dmask).logits
    manual = F.cross_entropy(logits[:, :-1].flatten(0, 1), dec[:, 1:].flatten(), reduction="none")
    keep = dmask[:, 1:].flatten().bool()
    assert loss.item() == pytest.approx(manual[keep].mean().item(), rel=1e-5)
    # Extra padding on the right changes nothing.
    pad = dict(batch, decoder_input_ids=F.pad(dec, (0, 3)), decoder_attention_mask=F.pad(dmask, (0, 3)))
    assert LM()(model, pad)[0].item() == pytest.approx(loss.item(), rel=1e-5)


def test_vqa_soft_scores_use_bce_and_report_the_vqa_score():
    torch.manual_seed(0)
    model = polymodal.create_model("vqa-tiny").eval()
    batch = _batch("vqa-tiny", "classification")  # labels 0/1: "yes"/"no" of vqa-tiny
    scores = torch.zeros(8, 6)
    scores[torch.arange(8), batch["labels"]] = 1.0
    scores[:, 2] = 0.3
    loss, logs = VQAClassification()(model, dict(batch, answer_scores=scores))
    logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]).logits
    expected = F.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    best = logits.argmax(-1)
    assert logs["score"].item() == pytest.approx(scores[torch.arange(8), best].mean().item())
    ce, _ = VQAClassification()(model, dict(batch))
    assert ce.item() == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)
    assert math.isfinite(ce.item())
