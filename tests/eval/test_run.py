"""`polymodal eval` end to end on generated shapes-world data: predictions files (perfect vs
shuffled), a model run, the ground-truth hallucination metric, and clear errors."""
import json
import re

import pytest
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data import open_dataset
from polymodal.errors import DataError
from polymodal.eval.run import evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("sw")
    res = runner.invoke(app, ["data", "generate", "shapes", "--out", str(out), "--n", "60", "--seed", "3"])
    assert res.exit_code == 0, res.output
    return out


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_vqa_predictions_perfect_and_shuffled(world, tmp_path):
    recs = list(open_dataset(f"shapes:{world}:vqa", "test"))
    perfect = _write(tmp_path / "p.jsonl", [{"question_id": r["id"], "answer": r["answers"][0]} for r in recs])
    res = evaluate("vqa", world, predictions=perfect, split="test", baseline=True)
    assert res["metrics"]["accuracy"] == pytest.approx(1.0) and res["n"] == len(recs)
    assert res["baseline"]["accuracy"] < 0.6
    assert res["metrics"]["accuracy[question_type=count]"] == pytest.approx(1.0)


def test_caption_predictions_score_and_hallucination(world, tmp_path):
    recs = list(open_dataset(f"shapes:{world}:captions", "test"))
    perfect = _write(tmp_path / "c.jsonl", [{"id": r["id"], "caption": r["captions"][0]} for r in recs])
    from polymodal.tasks.captioning import caption_scorer

    res = evaluate("captioning", world, predictions=perfect, split="test", baseline=True)
    m, b = res["metrics"], res["baseline"]
    assert m["bleu_4"] > 0.6 and m["cider_d"] > 2 * b["cider_d"]
    # one METEOR process serves the model's scores, the baseline's and the next evaluation's
    meteor = caption_scorer("en")._meteor
    assert meteor is not None and meteor.alive and m["meteor"] > b["meteor"]
    assert m["chair_i"] == 0.0 and m["chair_s"] == 0.0 and m["object_recall"] > 0.9
    assert b["chair_s"] > 0.5  # another image's caption names objects this scene lacks
    # A caption naming a shape the scene lacks hallucinates, every time.
    from polymodal.data.shapes import SHAPES

    def absent(scene):
        return next(s for s in SHAPES if s not in {o["shape"] for o in scene["objects"]})

    lie = _write(tmp_path / "lie.jsonl", [{"id": r["id"], "caption": f"A large {absent(r['scene'])}."} for r in recs])
    m = evaluate("captioning", world, predictions=lie, split="test")["metrics"]
    assert m["chair_s"] == 1.0 and m["chair_i"] == 1.0
    assert caption_scorer("en")._meteor is meteor and meteor.alive


def test_chinese_captions_are_scored_by_character(world, tmp_path):
    recs = list(open_dataset(f"shapes:{world}:captions", "test"))
    perfect = _write(tmp_path / "z.jsonl", [{"id": r["id"], "caption": r["captions_zh"][0]} for r in recs])
    m = evaluate("captioning", world, predictions=perfect, split="test", lang="zh")["metrics"]
    assert m["bleu_4_char"] > 0.6 and m["chair_i"] == 0.0


def test_classification_translation_grounding_files(world, tmp_path):
    cls = list(open_dataset(f"shapes:{world}:classify", "test"))
    f = _write(tmp_path / "k.jsonl", [{"id": r["id"], "label": r["label"]} for r in cls])
    assert evaluate("classification", world, predictions=f, split="test")["metrics"]["accuracy"] == 1.0
    tr = list(open_dataset(f"shapes:{world}:translate", "test"))
    f = _write(tmp_path / "t.jsonl", [{"id": r["id"], "translation": r["target"]} for r in tr])
    assert evaluate("translation", world, predictions=f, split="test")["metrics"]["bleu"] == pytest.approx(100.0)
    gr = list(open_dataset(f"shapes:{world}:ground", "test"))
    f = _write(tmp_path / "g.jsonl", [{"id": r["id"], "box": r["box"]} for r in gr])
    assert evaluate("grounding", world, predictions=f, split="test")["metrics"]["accuracy@0.5"] == 1.0


def test_model_run_through_the_cli_writes_json(world, tmp_path):
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["eval", "--model", "vqa-tiny", "--data", str(world), "--task", "vqa",
                              "--split", "test", "--limit", "12", "--out", str(out), "--baseline"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["n"] == 12 and 0.0 <= data["metrics"]["accuracy"] <= 1.0 and "baseline" in data


def test_bad_predictions_are_clear_errors(world, tmp_path):
    bad = _write(tmp_path / "b.jsonl", [{"question_id": "nope", "answer": "yes"}])
    with pytest.raises(DataError, match="match no record"):
        evaluate("vqa", world, predictions=bad, split="test")
    (tmp_path / "x.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"x\.jsonl:1: not JSON"):
        evaluate("vqa", world, predictions=tmp_path / "x.jsonl", split="test")
    res = runner.invoke(app, ["eval", "--predictions", str(bad), "--data", str(world), "--task", "retrieval"])
    assert res.exit_code == 2 and "cannot be scored from a predictions file" in res.output


def _official_specs(world):
    """The shapes world in its official formats: COCO captions and VQAv2 (integer ids)."""
    return (f"coco:{world}/coco_captions_test.json",
            f"vqa:{world}/vqa_test_questions.json,{world}/vqa_test_annotations.json")


def test_official_result_files_are_read(world, tmp_path):
    # Result files as the official COCO caption and VQA evaluations take them: one JSON array,
    # integer ids. Written out by hand here (indented, after a blank line), not by polymodal.
    coco, vqa = _official_specs(world)
    images = list(open_dataset(coco))
    captions = tmp_path / "captions_test_results.json"
    captions.write_text("\n  " + json.dumps([{"image_id": int(r["id"]), "caption": r["captions"][0]} for r in images],
                                            indent=2))
    m = evaluate("captioning", coco, predictions=captions)["metrics"]
    assert m["n"] == len(images) and m["bleu_4"] > 0.6

    questions = list(open_dataset(vqa))
    words = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}
    # Spelt as people write them ("Two.", "Yes."): the official rule normalises the prediction.
    answers = [{"question_id": int(r["id"]), "answer": words.get(r["answer"], r["answer"]).capitalize() + "."}
               for r in questions]
    answers[0]["answer"] = "a purple elephant"
    results = tmp_path / "OpenEnded_shapes_test_results.json"
    results.write_text(json.dumps(answers))
    m = evaluate("vqa", vqa, predictions=results)["metrics"]
    assert m["n"] == len(questions) and m["accuracy"] == pytest.approx((len(questions) - 1) / len(questions))


def test_saved_official_results_score_the_same(world, tmp_path):
    _, vqa = _official_specs(world)
    saved = tmp_path / "vqa_results.json"
    args = ["eval", "--data", vqa, "--task", "vqa", "--limit", "12", "--json"]
    res = runner.invoke(app, args + ["--model", "vqa-tiny", "--save-predictions", str(saved)])
    assert res.exit_code == 0, res.output
    rows = json.loads(saved.read_text())               # .json: the official array, integer question ids
    assert len(rows) == 12 and all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int)
                                   for r in rows)
    again = runner.invoke(app, args + ["--predictions", str(saved)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == json.loads(res.stdout)["metrics"]


def test_bad_result_files_name_the_file_item_and_key(world, tmp_path):
    _, vqa = _official_specs(world)
    qid = int(list(open_dataset(vqa))[0]["id"])
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"question_id": qid, "answer": "yes"}, {"question": "what?", "answer": "no"}]))
    with pytest.raises(DataError, match=r'r\.json: item 2: this vqa prediction lacks an id \(\'question_id\', '
                                        r'\'id\' or \'image\'\).*\{"question_id": \.\.\., "answer": \.\.\.\}'):
        evaluate("vqa", vqa, predictions=f)
    f.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(DataError, match=r"r\.json: item 1: this captioning prediction lacks 'caption'"):
        evaluate("captioning", _official_specs(world)[0], predictions=f)
    f.write_text('[{"question_id": 1, "answer": "yes"},')
    with pytest.raises(DataError, match=r"r\.json: starts with '\[' but is not a JSON array"):
        evaluate("vqa", vqa, predictions=f)
    f.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"r\.json: item 1 of 2 is not a JSON object"):
        evaluate("vqa", vqa, predictions=f)


def test_eval_table_shows_what_it_measures(world, tmp_path):
    # The per-type keys ("accuracy[question_type=count]") are text, not rich markup; counts are integers.
    recs = list(open_dataset(f"shapes:{world}:vqa", "test"))
    perfect = _write(tmp_path / "p.jsonl", [{"question_id": r["id"], "answer": r["answers"][0]} for r in recs])
    res = runner.invoke(app, ["eval", "--predictions", str(perfect), "--data", str(world), "--task", "vqa",
                              "--split", "test"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {cells[0]: cells[1:] for line in res.stdout.splitlines()
            if len(cells := re.findall(r"[^\s│┃|]+", line)) >= 2}
    counts = sum(r.get("question_type") == "count" for r in recs)
    assert rows["accuracy[question_type=count]"] == ["1.0000"]
    assert rows["n[question_type=count]"] == [str(counts)] and rows["n"] == [str(len(recs))]


def test_retrieval_ceiling_with_and_without_a_model(world):
    import numpy as np

    from polymodal.eval.shapes_metrics import retrieval_ceiling
    from polymodal.tasks import get_task

    recs = list(open_dataset(f"shapes:{world}:captions", "test"))
    texts = [c for r in recs for c in r["captions"]]
    owner = [i for i, r in enumerate(recs) for _ in r["captions"]]
    want = retrieval_ceiling(texts, owner, [r["scene"] for r in recs])
    assert want["n_unread_texts"] == 0 and 0 < want["ceiling_t2i_r1"] <= 1

    # no model: the ceiling alone, from Python and the CLI; Chinese texts fit as their English originals
    assert evaluate("retrieval", world, split="test", ceiling=True)["metrics"] == want
    assert evaluate("retrieval", world, split="test", ceiling=True, lang="zh")["metrics"] == want
    res = runner.invoke(app, ["eval", "--data", str(world), "--task", "retrieval", "--split", "test",
                              "--ceiling", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"] == pytest.approx(want) and json.loads(res.stdout)["model"] == "ceiling"

    # a model's scores carry the ceiling beside its own: here a perfect similarity matrix
    sim = np.equal.outer(np.arange(len(recs)), owner).astype(float)
    scored = get_task("retrieval").score({"similarity": sim, "text_to_image": owner}, recs)
    assert scored["t2i_r1"] == 1.0 and {k: scored[k] for k in want} == want

    with pytest.raises(DataError, match="no known ceiling"):
        evaluate("vqa", world, split="test", ceiling=True)
    with pytest.raises(DataError, match="scores no model"):
        evaluate("retrieval", world, split="test", ceiling=True, model="clip-tiny")


def test_question_only_baseline_learns_the_train_split_priors():
    """The VQA blind baseline answers each question with its most common training answer (same
    question, else same first three words, else overall), never looking at an image."""
    from polymodal.tasks import get_task

    def q(i, question, answer):
        return {"id": str(i), "question": question, "answers": [answer] * 10}

    train = [q(0, "Is there a red circle?", "yes"), q(1, "is there a red circle", "yes"),
             q(2, "Is there a red circle?", "no"), q(3, "What colour is the square?", "blue"),
             q(4, "What colour is the cross?", "red"), q(5, "What colour is the star?", "red"),
             q(6, "How many shapes are there?", "3")]
    test = [q(10, "Is  there a RED circle?", "no"), q(11, "What colour is the diamond?", "green"),
            q(12, "Which shape is left?", "circle")]
    blind = get_task("vqa").blind(test, train)
    # same question (case, spaces, "?" ignored): 2 yes vs 1 no; same first words: red 2 vs blue 1;
    # nothing alike: the most common answer overall (yes, red: 2 each; the first seen wins ties)
    assert blind == {"10": "yes", "11": "red", "12": "yes"}


def test_vqa_baseline_reports_the_question_only_prior(world, tmp_path):
    recs = list(open_dataset(f"shapes:{world}:vqa", "test"))
    perfect = _write(tmp_path / "p.jsonl", [{"question_id": r["id"], "answer": r["answers"][0]} for r in recs])
    res = evaluate("vqa", world, predictions=perfect, split="test", baseline=True)
    assert 0.0 < res["blind"]["accuracy"] < 1.0
    assert "accuracy[question_type=count]" in res["blind"]
    assert "blind" not in evaluate("captioning", world, predictions=_write(
        tmp_path / "c.jsonl", [{"image_id": r["id"], "caption": "a red circle"}
                               for r in open_dataset(f"shapes:{world}:captions", "test")]), split="test", baseline=True)


def test_question_only_baseline_never_learns_from_the_scored_records(tmp_path):
    """A data file without splits has no train records apart from those scored: no blind baseline
    (learning the priors from the test questions themselves would leak their answers)."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = _write(tmp_path / "q.jsonl", [{"id": str(i), "image": str(tmp_path / "a.png"), "question": f"q{i}?",
                                          "answers": ["yes"]} for i in range(3)])
    preds = _write(tmp_path / "p.jsonl", [{"question_id": str(i), "answer": "no"} for i in range(3)])
    res = evaluate("vqa", data, predictions=preds, baseline=True)
    assert "baseline" in res and "blind" not in res


def test_retrieval_reranked_by_a_captioner(world, tmp_path):
    """`--rerank`: each direction's top k re-scored by a captioner's likelihood; every candidate
    ranks above the rest in the scorer's order, the embedding's own recalls stay in the result."""
    import numpy as np

    import polymodal
    from polymodal.tasks.retrieval import rerank_scores

    recs = list(open_dataset(f"shapes:{world}:captions", "test"))
    images = [r["image"] for r in recs]
    texts = [r["captions"][0] for r in recs]
    captioner = polymodal.load("captioner-tiny")
    sim = np.random.default_rng(0).normal(size=(len(images), len(texts))).astype(np.float32)
    k = 3
    out = rerank_scores(captioner, images, texts, sim, k=k)
    for j in range(len(texts)):                                  # text -> image
        cand = np.argsort(-sim[:, j])[:k]
        col = out["t2i_similarity"][:, j]
        want = captioner.caption_logprob([images[i] for i in cand], [texts[j]] * k)
        assert np.argsort(-col)[:k].tolist() == cand[np.argsort(-want, kind="stable")].tolist()
        rest = np.setdiff1d(np.arange(len(images)), cand)
        assert col[cand].min() > col[rest].max()
        assert np.argsort(-col[rest]).tolist() == np.argsort(-sim[rest, j]).tolist()
    for i in range(len(images)):                                 # image -> text
        cand = np.argsort(-sim[i])[:k]
        assert set(np.argsort(-out["i2t_similarity"][i])[:k].tolist()) == set(cand.tolist())

    res = runner.invoke(app, ["eval", "--model", "clip-tiny", "--rerank", "captioner-tiny", "--rerank-k", "4",
                              "--data", str(world), "--task", "retrieval", "--split", "test", "--json", "--baseline"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["rerank"] == {"model": "captioner-tiny", "k": 4}
    m = data["metrics"]
    assert {"embedding_i2t_r1", "embedding_t2i_r1", "i2t_r1", "t2i_r1", "ceiling_t2i_r1"} <= set(m)
    for key in ("t2i_r5", "t2i_r10", "i2t_r5", "i2t_r10"):       # at K >= k the candidates are the same
        assert m[key] == m[f"embedding_{key}"], key
    res = runner.invoke(app, ["eval", "--model", "clip-tiny", "--rerank", "clip-tiny", "--data", str(world),
                              "--task", "retrieval", "--split", "test"])
    assert res.exit_code != 0 and "captioner" in res.output
    res = runner.invoke(app, ["eval", "--model", "vqa-tiny", "--rerank", "captioner-tiny", "--data", str(world),
                              "--task", "vqa", "--split", "test"])
    assert res.exit_code != 0 and "--task retrieval" in res.output


def test_eval_passes_repetition_controls_to_generation(world, monkeypatch):
    """--repetition-penalty / --no-repeat-ngram reach the captioner's generation; a task whose
    model writes no text refuses them, naming the flag."""
    import polymodal.eval.run as run

    seen = {}

    def fake(task, data, **kw):
        seen.update(kw)
        return {"task": "captioning", "n": 0, "metrics": {}}

    monkeypatch.setattr(run, "evaluate", fake)
    res = runner.invoke(app, ["eval", "--model", "captioner-tiny", "--data", str(world), "--task", "captioning",
                              "--split", "test", "--beams", "3", "--repetition-penalty", "1.5", "--no-repeat-ngram", "3",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert (seen["num_beams"], seen["repetition_penalty"], seen["no_repeat_ngram_size"]) == (3, 1.5, 3)
    res = runner.invoke(app, ["eval", "--model", "clip-tiny", "--data", str(world), "--task", "retrieval",
                              "--split", "test", "--repetition-penalty", "1.5"])
    assert res.exit_code != 0 and "--repetition-penalty" in res.output
    res = runner.invoke(app, ["eval", "--model", "captioner-tiny", "--data", str(world), "--task", "captioning",
                              "--repetition-penalty", "0.5"])
    assert res.exit_code != 0 and "--repetition-penalty" in res.output
