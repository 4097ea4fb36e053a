"""Torch datasets and collators: bad records are skipped and counted (also across workers),
batches are deterministic under a seed, and each task's collator builds the right tensors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from polymodal.data import open_dataset
from polymodal.data.collate import (IGNORE_INDEX, answer_vocab, image_id_tensor, label_vocab, make_collator, majority_answer,
                                    pick_caption)
from polymodal.data.dataset import RecordDataset, StreamDataset, build_dataset
from polymodal.data.tools import shard
from polymodal.data.vocab import Vocab, normalize_answer
from polymodal.errors import DataError


def _with_bad_images(shapes_dir: Path, tmp_path: Path, every: int = 5) -> Path:
    """A copy of the train captions manifest where every `every`-th image is broken or missing."""
    recs = [json.loads(x) for x in (shapes_dir / "captions_train.jsonl").read_text().splitlines()]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for k, r in enumerate(recs):
        r["image"] = str(shapes_dir / r["image"])
        if k % every == 1:
            r["image"] = str(tmp_path / ("bad.png" if k % 2 else "missing.png"))
    path = tmp_path / "with_bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_bad_records_are_replaced_dropped_or_raised(shapes_dir, tmp_path):
    path = _with_bad_images(shapes_dir, tmp_path)
    n_bad = sum(1 for k in range(120) if k % 5 == 1)
    ds = RecordDataset(open_dataset(f"jsonl:{path}"), on_error="replace")
    items = [ds[i] for i in range(len(ds))]
    assert ds.skipped == n_bad
    assert all(it["image"].size == (64, 64) and it["image"].mode == "RGB" for it in items)
    assert items[1]["id"] == items[2]["id"]  # bad record 1 became record 2
    drop = RecordDataset(open_dataset(f"jsonl:{path}"), on_error="drop")
    assert sum(drop[i] is None for i in range(len(drop))) == n_bad == drop.skipped
    with pytest.raises(DataError, match="bad.png|missing.png"):
        RecordDataset(open_dataset(f"jsonl:{path}"), on_error="raise")[1]


def test_skipped_count_crosses_worker_processes_and_batches_are_deterministic(shapes_dir, tmp_path, processor):
    path = _with_bad_images(shapes_dir, tmp_path)
    collate = make_collator("caption", processor)

    def run(workers):
        ds = RecordDataset(open_dataset(f"jsonl:{path}"), seed=1, on_error="drop")
        loader = DataLoader(ds, batch_size=16, num_workers=workers, collate_fn=collate,
                            shuffle=True, generator=torch.Generator().manual_seed(0))
        batches = [b for b in loader]
        return ds.skipped, batches

    skipped0, b0 = run(0)
    skipped2, b2 = run(2)
    assert skipped0 == skipped2 == sum(1 for k in range(120) if k % 5 == 1)
    assert [b["ids"] for b in b0] == [b["ids"] for b in b2]
    for x, y in zip(b0, b2):
        assert torch.equal(x["decoder_input_ids"], y["decoder_input_ids"]) and torch.equal(x["pixel_values"], y["pixel_values"])
    assert sum(len(b["ids"]) for b in b0) == 120 - skipped0


def test_caption_choice_changes_with_epoch_not_with_workers(shapes_dir):
    ds = RecordDataset(open_dataset(f"shapes:{shapes_dir}"), seed=0, decode=False)
    first = [pick_caption(ds[i]) for i in range(30)]
    assert first == [pick_caption(ds[i]) for i in range(30)]
    ds.set_epoch(1)
    assert first != [pick_caption(ds[i]) for i in range(30)]
    assert all(c in ds[i]["captions"] for i, c in enumerate(first))


def test_stream_dataset_splits_shards_among_workers(shapes_dir, tmp_path, processor):
    report = shard(f"shapes:{shapes_dir}:classify:train", tmp_path / "s", maxcount=50)
    # one broken shard more: its records are skipped and counted, the run goes on
    (tmp_path / "s" / "shards-000099.tar").write_bytes(Path(report["shards"][0]).read_bytes()[:3000])
    spec = f"wds:{tmp_path}/s/shards-{{000000..000004}}.tar::{tmp_path}/s/shards-000099.tar"
    ds = build_dataset(spec, seed=0)
    assert isinstance(ds, StreamDataset)
    labels = label_vocab(open_dataset(f"shapes:{shapes_dir}:classify"))
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=make_collator("classify", processor, labels=labels))
    ids = [i for b in loader for i in b["ids"]]
    assert len(ids) == len(set(ids)) == 240
    assert ds.skipped == 1
    # two processes of a distributed run read disjoint halves
    halves = [[x["id"] for x in StreamDataset(open_dataset(spec), decode=False, rank=r, world_size=2)] for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(ids) and not set(halves[0]) & set(halves[1])
    # shuffling within a buffer is seeded
    a = [x["id"] for x in StreamDataset(open_dataset(spec), decode=False, shuffle_buffer=32, seed=5)]
    b = [x["id"] for x in StreamDataset(open_dataset(spec), decode=False, shuffle_buffer=32, seed=5)]
    assert a == b and sorted(a) == sorted(ids) and a != sorted(a)


def test_pair_and_caption_collators(shapes_dir, processor):
    items = [RecordDataset(open_dataset(f"shapes:{shapes_dir}"))[i] for i in range(4)]
    pairs = make_collator("pretrain", processor)(items)
    assert pairs["pixel_values"].shape == (4, 3, 32, 32) and pairs["pixel_values"].dtype == torch.float32
    assert pairs["input_ids"].shape == pairs["attention_mask"].shape and pairs["input_ids"].shape[0] == 4
    assert pairs["texts"][0] in items[0]["captions"] and pairs["image_ids"].dtype == torch.long
    assert pairs["image_ids"].tolist() == image_id_tensor([it["id"] for it in items]).tolist()
    assert len(set(pairs["image_ids"].tolist())) == 4 and pairs["image_ids"].max() < 2 ** 24
    decoded = processor.tokenizer.decode(pairs["input_ids"][0], skip_special_tokens=True)
    assert decoded.replace(" ", "") == pairs["texts"][0].lower().replace(" ", "")
    caps = make_collator("caption", processor, max_length=8)(items + [None])
    assert caps["decoder_input_ids"].shape[1] <= 8 and len(caps["ids"]) == 4 and "input_ids" not in caps
    ids = caps["decoder_input_ids"]
    assert ids[0, 0] == processor.tokenizer.cls_token_id  # BOS ... EOS, padded
    assert caps["decoder_attention_mask"].sum(1).max() == (ids != processor.tokenizer.pad_token_id).sum(1).max()
    assert caps["references"][0] == items[0]["captions"]
    assert make_collator("caption", processor)([None, None]) is None


def test_vqa_collators_soft_targets_and_vocabulary(shapes_dir, processor):
    train = list(open_dataset(f"shapes:{shapes_dir}:vqa"))
    vocab = answer_vocab(train)
    assert set(vocab.tokens) <= {"yes", "no", *"012345678", "red", "orange", "yellow", "green", "cyan", "blue",
                                 "purple", "white", "circle", "square", "triangle", "diamond", "cross"}
    assert vocab[0] in ("yes", "no")  # most common first
    items = [{"image": None, "id": "a", "question": "What?", "answers": ["Two", "2", "two.", "3"] + ["yes"] * 6},
             {"image": None, "id": "b", "question": "Is it?", "answers": ["no"]},
             {"image": None, "id": "c", "question": "Huh?", "answers": ["a zebra"]}]
    batch = make_collator("vqa", processor, answers=vocab)(items)
    assert "pixel_values" not in batch and batch["answer_scores"].shape == (3, len(vocab))
    t = batch["answer_scores"]
    assert t[0, vocab.index("2")] == 1.0 and t[0, vocab.index("yes")] == 1.0
    assert abs(t[0, vocab.index("3")].item() - 1 / 3) < 1e-6 and t[1, vocab.index("no")] == 1.0
    assert t[2].sum() == 0 and batch["labels"].tolist() == [vocab.index("yes"), vocab.index("no"), IGNORE_INDEX]
    gen = make_collator("vqa_generate", processor)(items)
    first = gen["decoder_input_ids"][0][gen["decoder_attention_mask"][0] == 1]
    assert processor.tokenizer.decode(first, skip_special_tokens=True) == "yes"
    # The model's own answer list works as the vocabulary too (the trainer passes it).
    by_labels = make_collator("vqa", processor, labels=vocab.tokens)(items)
    assert torch.equal(by_labels["answer_scores"], batch["answer_scores"])
    assert majority_answer(["b", "a", "a", "b"]) == "b"
    assert normalize_answer("The Two.") == "2" and normalize_answer("yes!") == "yes" and normalize_answer("3.5") == "3.5"


def test_classify_translate_and_ground_collators(shapes_dir, processor):
    ds = RecordDataset(open_dataset(f"shapes:{shapes_dir}:classify"))
    labels = label_vocab(open_dataset(f"shapes:{shapes_dir}:classify"))
    assert labels.tokens == ["false", "true"]
    batch = make_collator("classify", processor, labels=labels)([ds[i] for i in range(6)])
    assert batch["labels"].tolist() == [labels.index(ds[i]["label"]) for i in range(6)]
    assert batch["input_ids"].shape[0] == 6  # the statement goes in with the image
    folder = RecordDataset(open_dataset(f"folder:{shapes_dir}/classes/train"))
    fl = label_vocab(open_dataset(f"folder:{shapes_dir}/classes/train"))
    fb = make_collator("classify", processor, labels=fl)([folder[i] for i in range(3)])
    assert "input_ids" not in fb and fb["labels"].tolist() == [fl.index(folder[i]["label"]) for i in range(3)]

    tr = RecordDataset(open_dataset(f"shapes:{shapes_dir}:translate"))
    chars = {c: i + 1 for i, c in enumerate(sorted(set("".join(tr[i]["target"] for i in range(4)))))}

    def char_tokenize(texts, max_length=None):  # a character-level Chinese target tokenizer
        ids = [[chars[c] for c in t] for t in texts]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])}

    tb = make_collator("translate", processor, target_tokenize=char_tokenize)([tr[i] for i in range(4)])
    assert tb["references"] == [tr[i]["target"] for i in range(4)]
    assert tb["decoder_attention_mask"][0].sum() == len(tr[0]["target"])
    assert tb["input_ids"].shape[0] == 4  # the English source goes to the encoder

    gr = RecordDataset(open_dataset(f"shapes:{shapes_dir}:ground"))
    gb = make_collator("ground", processor)([gr[i] for i in range(5)])
    want = torch.tensor([gr[i]["box"] for i in range(5)], dtype=torch.float32) / 64
    assert torch.allclose(gb["boxes"], want) and gb["image_sizes"].tolist() == [[64, 64]] * 5
    with pytest.raises(DataError, match="no collator for task"):
        make_collator("dance", processor)


def test_vocab_basics():
    v = Vocab.build(["b", "a", "b", ["c", "b"]])
    assert v.tokens == ["b", "a", "c"] and v.index("c") == 2 and "a" in v
    assert Vocab.build(["b", "a", "b"], order="sorted").tokens == ["a", "b"]
    with pytest.raises(DataError, match="not in the vocabulary"):
        v.index("zzz")
    with pytest.raises(DataError, match="duplicate"):
        Vocab(["a", "a"])
