"""Data quality tools on hand-made cases with known answers (polymodal.data.quality)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from polymodal.data import quality as Q
from polymodal.data.formats import open_dataset
from polymodal.errors import ConfigError, DataError


def _scene(shapes, bg=(60, 60, 60), size=64) -> Image.Image:
    """A hand-drawn scene: [(kind, colour, (x0, y0, x1, y1))]."""
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for kind, colour, box in shapes:
        (d.ellipse if kind == "circle" else d.rectangle)(box, fill=colour)
    return img


A = [("circle", (220, 30, 30), (8, 8, 28, 28)), ("square", (30, 200, 60), (36, 30, 56, 50))]
B = [("square", (30, 60, 220), (20, 6, 44, 30)), ("circle", (230, 220, 40), (6, 40, 22, 56))]
C = [("circle", (240, 240, 240), (30, 30, 60, 60))]
D = [("square", (200, 100, 20), (4, 4, 20, 60))]


@pytest.fixture
def manifest(tmp_path):
    """a: a scene; a_copy: the same file; a_shift: shifted 3 px; a_jpeg; b, b_tint: recoloured;
    c, d: other scenes; broken: a truncated PNG; caption duplicates differ in case and punctuation."""
    im = tmp_path / "im"
    im.mkdir()
    _scene(A).save(im / "a.png")
    shutil.copyfile(im / "a.png", im / "a_copy.png")
    Image.fromarray(np.roll(np.asarray(_scene(A)), 3, axis=1)).save(im / "a_shift.png")
    _scene(A).save(im / "a_jpeg.jpg", quality=70)
    _scene(B, bg=(40, 50, 60)).save(im / "b.png")
    _scene(B, bg=(43, 53, 64)).save(im / "b_tint.png")
    _scene(C, bg=(10, 80, 10)).save(im / "c.png")
    _scene(D, bg=(90, 20, 90)).save(im / "d.png")
    (im / "broken.png").write_bytes((im / "a.png").read_bytes()[:40])
    rows = [("a", "a.png", "A red circle and a green square."), ("b", "b.png", "A blue square and a yellow circle."),
            ("a_copy", "a_copy.png", "Red circle, green square."), ("c", "c.png", "A white circle."),
            ("a_shift", "a_shift.png", "A red circle left of a green square."), ("b_tint", "b_tint.png", "a BLUE square and a yellow circle!"),
            ("d", "d.png", "An orange bar."), ("broken", "broken.png", "A broken file."),
            ("a_jpeg", "a_jpeg.jpg", "A red circle, a green square.")]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": i, "image": f"im/{f}", "caption": c}) + "\n" for i, f, c in rows))
    return path


def test_hashes_and_thumbnails_known_answers():
    a, c = _scene(A), _scene(C, bg=(10, 80, 10))
    assert Q.phash(a) == Q.phash(a.copy()) and Q.dhash(a) == Q.dhash(a.copy())
    assert Q.hamming(Q.phash(a), Q.phash(a.resize((48, 48)))) <= 4     # resizing keeps the low frequencies
    assert Q.hamming(Q.phash(a), Q.phash(c)) > 12
    assert Q.hamming(0b1011, 0b0001) == 2
    ta, tc = Q.thumb_embedding(a), Q.thumb_embedding(c)
    assert np.isclose(np.linalg.norm(ta), 1) and float(ta @ Q.thumb_embedding(a.resize((80, 80)))) > 0.98
    assert float(ta @ tc) < 0.5
    assert Q.content_hash(a) == Q.content_hash(a.copy()) != Q.content_hash(c)


def test_aligned_cosine_finds_the_shift():
    a = Q.canonical(_scene(A))
    shifted = np.roll(np.roll(a, 3, axis=1), -2, axis=0)
    other = Q.canonical(_scene(B, bg=(40, 50, 60)))
    s = Q.aligned_cosine(np.stack([a, a]), np.stack([shifted, other]))
    assert s[0] > 0.99 and s[1] < 0.6
    assert Q.aligned_cosine(a[None], np.roll(a, 6, axis=1)[None], max_shift=4)[0] < 0.9  # beyond the window
    # a batch mixing shifts (each pair's best shift differs): every copy found, each pair's value
    # equal to the pair scored alone
    shifts = [(0, 0), (1, -2), (-3, 4), (4, 1), (-1, -4)]
    copies = np.stack([np.roll(np.roll(a, dx, axis=1), dy, axis=0) for dy, dx in shifts] + [other])
    batch = Q.aligned_cosine(np.stack([a] * 6), copies)
    assert (batch[:5] > 0.99).all() and batch[5] < 0.6
    alone = [Q.aligned_cosine(a[None], c[None])[0] for c in copies]
    assert batch == pytest.approx(alone, abs=1e-5)


def test_neighbours_exact_and_faiss_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[1] = x[0] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact, m1 = Q.neighbours(x, k=3, index_min=10_000)
    assert m1.startswith("exact") and (0, 1) in {(i, j) for i, j, _ in exact}
    full = x @ x.T
    np.fill_diagonal(full, -9)
    assert {(min(i, j), max(i, j)) for i, j in enumerate(full.argmax(1))} <= {(i, j) for i, j, _ in exact}
    if Q._faiss() is not None:
        approx, m2 = Q.neighbours(x, k=3, index_min=100)
        assert m2.startswith("faiss")
        assert len({(i, j) for i, j, _ in approx} & {(i, j) for i, j, _ in exact}) / len(exact) > 0.95


def test_hash_pairs_exact():
    h = np.array([0, 0b111, 0b1, 0xFFFF << 48], dtype=np.uint64)
    pairs, _ = Q.hash_pairs(h, 1)
    assert {(i, j) for i, j, _ in pairs} == {(0, 2)}
    pairs, _ = Q.hash_pairs(h, 3, queries=np.array([0b11], dtype=np.uint64))
    assert {(i, j, d) for i, j, d in pairs} == {(0, 0, 2), (0, 1, 1), (0, 2, 1)}


def test_dedup_groups_known_answer(manifest):
    rep = Q.find_duplicates(f"jsonl:{manifest}")
    groups = {(g["kind"], g["kept"], tuple(sorted(g["members"]))) for g in rep["groups"]}
    assert ("exact", "a", ("a", "a_copy")) in groups
    near = [g for g in rep["groups"] if g["kind"] == "near"]
    assert sorted(sorted(g["members"]) for g in near) == [["a", "a_copy", "a_jpeg", "a_shift"], ["b", "b_tint"]]
    assert {g["kept"] for g in near} == {"a", "b"}                       # the first in the spec's order
    caption = [sorted(g["members"]) for g in rep["groups"] if g["kind"] == "caption"]
    assert caption == [["b", "b_tint"]]                                  # equal after normalisation
    assert [u["id"] for u in rep["unreadable"]] == ["broken"]
    assert rep["duplicates"] == {"exact": 1, "near": 4, "caption": 1}


def test_dedup_against_finds_leaks(manifest, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "t1", "image": str(tmp_path / "im" / "c.png"), "caption": "x"}) + "\n"
                    + json.dumps({"id": "t2", "image": str(tmp_path / "im" / "b.png"), "caption": "y"}) + "\n")
    rep = Q.find_duplicates(f"jsonl:{manifest}", against=f"jsonl:{test}", captions=False)
    leaks = {x["id"]: (x["test_id"], x["kind"]) for x in rep["leaks"]}
    assert leaks == {"b": ("t2", "exact"), "c": ("t1", "exact"), "b_tint": ("t2", "near")}


def test_score_checks_known_answers(tmp_path):
    im = tmp_path / "im"
    im.mkdir()
    _scene(A).save(im / "ok.png")
    _scene(A).resize((96, 16)).save(im / "wide.png")
    _scene(A).resize((8, 8)).save(im / "tiny.png")
    rows = [{"id": "ok", "image": "im/ok.png", "caption": "A red circle."},
            {"id": "dup", "image": "im/ok.png", "caption": "a red circle"},
            {"id": "wide", "image": "im/wide.png", "caption": "A strip."},
            {"id": "tiny", "image": "im/tiny.png", "caption": "A dot."},
            {"id": "zh", "image": "im/ok.png", "caption": "一个红色的圆。"},
            {"id": "empty", "image": "im/ok.png", "caption": "  "},
            {"id": "long", "image": "im/ok.png", "caption": "word " * 90},
            {"id": "gone", "image": "im/gone.png", "caption": "Missing."}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "s.jsonl"
    summary = Q.score(f"jsonl:{path}", out=out, lang="en")
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert got["ok"]["ok"] and got["ok"]["problems"] == [] and got["ok"]["lang"] == "en"
    assert got["dup"]["duplicate_text_of"] == "ok" and got["dup"]["ok"]
    first = {k: [p.split(":")[0] for p in r["problems"]] for k, r in got.items()}
    assert first["wide"] == ["extreme aspect ratio"] and got["wide"]["aspect"] == 6.0
    assert first["tiny"] == ["too small"]
    assert first["zh"] == ["wrong language"] and got["zh"]["lang"] == "zh"
    assert first["empty"] == ["empty text"]
    assert first["long"] == ["text too long"]
    assert first["gone"] == ["missing image"]
    assert [k for k in got if k.endswith(":9")] and summary["records"] == 9 and summary["ok"] == 2
    assert summary["problems"]["unreadable record"] == 1 and got["ok"]["score"] is None  # no model: no score


def test_score_with_a_model_is_its_cosine(manifest, tmp_path):
    import polymodal

    model = polymodal.load("clip-tiny")
    out = tmp_path / "s.jsonl"
    summary = Q.score(f"jsonl:{manifest}", model, out=out, batch_size=4)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    recs = {r["id"]: r for r in open_dataset(f"jsonl:{manifest}") }
    want = float(model.embed_images([recs["c"]["image"]])[0] @ model.embed_texts([recs["c"]["caption"]])[0])
    assert rows["c"]["score"] == pytest.approx(want, abs=1e-4)
    assert rows["broken"]["score"] is None and rows["broken"]["problems"][0].startswith("unreadable image")
    assert summary["score"]["n"] == 8 and "itm" not in summary                      # a dual encoder: no ITM head
    assert not model.can_match()


def test_match_is_the_itm_probability():
    import polymodal

    model = polymodal.load("pretrain-tiny")
    assert model.can_match()                                            # pretrain-tiny has an ITM head
    img = _scene(A)
    p = model.match([img, img], ["a red circle", "a blue square"])
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


def test_filter_writes_a_new_manifest(manifest, tmp_path):
    scores = tmp_path / "s.jsonl"
    Q.score(f"jsonl:{manifest}", out=scores)
    rows = [json.loads(x) for x in scores.read_text().splitlines()]
    for k, r in enumerate(rows):  # hand-set scores: a 0.9, b 0.8, ... in the manifest's order
        r["score"] = round(0.9 - 0.1 * k, 2)
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = manifest.read_bytes()
    dedup = tmp_path / "d.json"
    dedup.write_text(json.dumps(Q.find_duplicates(f"jsonl:{manifest}")))
    out = tmp_path / "new" / "kept.jsonl"
    rep = Q.filter_spec(f"jsonl:{manifest}", scores, out, min_score=0.25, dedup=dedup)
    kept = [r["id"] for r in open_dataset(f"jsonl:{out}")]
    assert kept == ["a", "b", "c", "d"]                  # a_copy, a_shift, a_jpeg, b_tint: duplicates; broken
    assert rep["reasons"] == {"exact duplicate of a": 1, "near duplicate of a": 2, "near duplicate of b": 1,
                              "unreadable image": 1, "score under 0.25": 2}
    report = json.loads(open(rep["report"]).read())
    assert {d["id"] for d in report["dropped_records"]} == {"a_copy", "a_shift", "b_tint", "broken", "a_jpeg"}
    assert all(r["image"].startswith(str(tmp_path / "im")) for r in map(json.loads, out.read_text().splitlines()))
    assert manifest.read_bytes() == before
    top = Q.filter_spec(f"jsonl:{manifest}", scores, tmp_path / "top.jsonl", keep_top=0.5, keep_problems=True)
    assert top["kept"] == 5 and top["threshold"] == 0.5
    with pytest.raises(ConfigError, match="exactly one"):
        Q.filter_spec(f"jsonl:{manifest}", scores, tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="input manifest"):
        Q.filter_spec(f"jsonl:{manifest}", scores, manifest, keep_top=0.5)
    other = tmp_path / "other.jsonl"
    other.write_text(scores.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="has no row for 8 of the 9"):
        Q.filter_spec(f"jsonl:{manifest}", other, tmp_path / "x.jsonl", keep_top=0.5)


def test_corrupt_and_measure(shapes_dir, tmp_path):
    rep = Q.corrupt(f"shapes:{shapes_dir}:captions:train", tmp_path / "noisy", swap=0.1, duplicates=0.1, broken=4,
                    seed=0)
    truth = json.loads(open(rep["truth"]).read())
    assert (rep["swapped"], rep["duplicates"], rep["broken"], rep["records"]) == (12, 12, 4, 136)
    recs = {r["id"]: r for r in open_dataset(rep["spec"]).entries() and
            (e.record for e in open_dataset(rep["spec"]).entries() if e.record)}
    orig = {r["id"]: r for r in open_dataset(f"shapes:{shapes_dir}:captions:train")}
    for s in truth["swapped"]:
        assert recs[s["id"]]["captions"] == orig[s["texts_of"]]["captions"] != orig[s["id"]]["captions"]
    scores, dedup = tmp_path / "s.jsonl", tmp_path / "d.json"
    Q.score(rep["spec"], out=scores)
    dedup.write_text(json.dumps(Q.find_duplicates(rep["spec"])))
    m = Q.measure(rep["truth"], scores, dedup)
    assert m["broken"]["precision"] == m["broken"]["recall"] == 1.0
    assert m["exact_duplicates"]["precision"] == m["exact_duplicates"]["recall"] == 1.0
    assert m["near_duplicates"]["recall"] == 1.0


def test_cli_score_filter_dedup(manifest, tmp_path):
    from polymodal.cli import app

    runner = CliRunner()
    s = tmp_path / "s.jsonl"
    res = runner.invoke(app, ["data", "score", f"jsonl:{manifest}", "--out", str(s), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.splitlines()[-1])["records"] == 9
    res = runner.invoke(app, ["data", "dedup", f"jsonl:{manifest}", "--out", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert "exact  a" in res.output and "a_copy" in res.output
    res = runner.invoke(app, ["data", "filter", f"jsonl:{manifest}", "--scores", str(s), "--out",
                              str(tmp_path / "f.jsonl"), "--keep-top", "1", "--field", "words",
                              "--dedup", str(tmp_path / "d.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "kept 4 of 9" in res.output and "unreadable image" in res.output


def test_pick_threshold_known_answer(tmp_path):
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"swapped": [{"id": "x"}, {"id": "y"}], "duplicates": [], "broken": []}))
    scores = tmp_path / "s.jsonl"
    values = {"x": 0.1, "y": 0.3, "a": 0.2, "b": 0.5, "c": 0.6, "d": None}
    scores.write_text("".join(json.dumps({"id": k, "score": v, "problems": []}) + "\n" for k, v in values.items()))
    best = Q.pick_threshold(truth, scores)
    assert best == {"min_score": 0.4, "precision": 0.6667, "recall": 1.0, "f1": 0.8}
    m = Q.measure(truth, scores, min_score=0.15)
    assert m["swapped"]["precision"] == 1.0 and m["swapped"]["recall"] == 0.5


def test_caption_logprob_is_the_teacher_forced_mean_token_logprob():
    import torch

    import polymodal

    model = polymodal.load("captioner-tiny")                    # random weights: a known answer by hand
    assert model.can_score_captions() and not polymodal.load("clip-tiny").can_score_captions()
    imgs, texts = [_scene(A), _scene(C)], ["a red circle and a green square on a grey ground", "a circle"]
    got = model.caption_logprob(imgs, texts)                    # one batch: the short text is padded
    for img, text, g in zip(imgs, texts, got):
        ids = model.processor.tokenize([text])["input_ids"]    # (1, T) [CLS] ... [SEP], no padding
        with torch.no_grad():
            logits = model.model(model.processor.process_images([img]), decoder_input_ids=ids).logits[0]
        logp = logits.log_softmax(-1)                           # (T, V)
        want = np.mean([float(logp[t, ids[0, t + 1]]) for t in range(ids.shape[1] - 1)])
        assert g == pytest.approx(want, abs=1e-4)
    # an image given twice in a batch is encoded once, with the same result
    again = model.caption_logprob([imgs[0], imgs[1], imgs[0]], [texts[0], texts[1], texts[1]])
    assert again[:2] == pytest.approx(got, abs=1e-5)
    assert again[2] == pytest.approx(model.caption_logprob([imgs[0]], [texts[1]])[0], abs=1e-5)
    with pytest.raises(ValueError, match="one text per image"):
        model.caption_logprob(imgs, texts[:1])


def test_caption_logprob_prefers_the_true_caption_after_training(tmp_path):
    """A tiny captioner trained a few steps on two matched pairs gives each image's own caption a
    higher likelihood than the other's; `score` writes it as `caption_logprob`, `filter` uses it."""
    import torch

    import polymodal
    from polymodal.train.objectives import LM

    torch.manual_seed(0)
    model = polymodal.load("captioner-tiny")
    imgs, texts = [_scene(A), _scene(C, bg=(10, 80, 10))], ["a red circle and a green square", "one white circle"]
    px = model.processor.process_images(imgs)
    enc = model.processor.tokenize(texts)
    batch = {"pixel_values": px, "decoder_input_ids": enc["input_ids"], "decoder_attention_mask": enc["attention_mask"]}
    opt = torch.optim.AdamW(model.model.parameters(), lr=1e-3)
    model.model.train()
    for _ in range(30):
        loss, _ = LM()(model.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.model.eval()
    lp = model.caption_logprob(imgs + imgs, texts + texts[::-1])   # matched, then swapped
    assert lp[0] > lp[2] and lp[1] > lp[3]

    im = tmp_path / "im"
    im.mkdir()
    for name, img in zip("ac", imgs):
        img.save(im / f"{name}.png")
    rows = [("a", "a.png", texts[0]), ("c", "c.png", texts[1]), ("a_swapped", "a.png", texts[1])]
    spec = tmp_path / "m.jsonl"
    spec.write_text("".join(json.dumps({"id": i, "image": f"im/{f}", "caption": c}) + "\n" for i, f, c in rows))
    summary = Q.score(f"jsonl:{spec}", model, out=tmp_path / "s.jsonl")
    got = {r["id"]: r for r in Q.read_scores(tmp_path / "s.jsonl")}
    assert summary["caption_logprob"]["n"] == 3 and got["a"]["score"] is None   # a captioner: no cosine
    assert got["a"]["caption_logprob"] == pytest.approx(float(lp[0]), abs=1e-4)
    assert got["a_swapped"]["caption_logprob"] == pytest.approx(float(lp[2]), abs=1e-4)
    rep = Q.filter_spec(f"jsonl:{spec}", tmp_path / "s.jsonl", tmp_path / "kept.jsonl", keep_top=0.6,
                        field="caption_logprob")
    kept = [json.loads(x)["id"] for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert "a_swapped" not in kept and len(kept) == 2, rep


def test_score_with_a_model_that_cannot_score_pairs_says_so(manifest):
    import polymodal

    model = polymodal.load("translator-tiny")           # encoder-decoder with a text tower: no pair score
    assert not model.can_score_captions()
    with pytest.raises(ConfigError, match="cannot score image-text pairs"):
        Q.score(f"jsonl:{manifest}", model)
