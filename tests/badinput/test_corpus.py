"""The bad-input corpus: every command, through the real `polymodal` entry point, against files,
texts, configs and requests that are wrong in the ways users (and testers) get them wrong.

For every (command, bad input) pair: no traceback, the documented exit code (docs/errors.md:
0 done, 1 some items failed and the rest were written, 2 the command could not run), the
other items processed, and nothing in the user's folders deleted or changed.
"""
from __future__ import annotations

import json
import shutil
import struct
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import polymodal
from polymodal.checkpoint import save_checkpoint
from polymodal.cli import app
from polymodal.data import shapes
from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor

runner = CliRunner()
OK = "ok"  # an expected row without an error


@dataclass
class Case:
    """One command run. `args` are formatted with the corpus paths (`{vqa}`, `{imgs}`, ...) and
    `{out}` (a fresh folder for outputs the user asked for).

    Args:
        code: the exit code. rows: per JSON row on stdout, OK or a text its `error` contains.
        says: texts the output (stdout + stderr) contains. json: keys of the last JSON line.
    """

    name: str
    args: list[str]
    code: int
    rows: list[str] | None = None
    says: list[str] = field(default_factory=list)
    json: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no pixel data): a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _requests(path: Path, key: str, good: list[str], bad: dict) -> None:
    """A request file: good lines, then each kind of bad line (raw bytes where JSON cannot say it)."""
    lines = [json.dumps({"image": good[0], key: "is there a circle?"}).encode(),
             json.dumps({"image": good[0], key: ""}).encode(),                      # empty text
             b"{not json",
             b'{"image": "%s", "%s": "what \\ud800 colour?"}' % (good[1].encode(), key.encode()),  # lone surrogate
             json.dumps({"image": good[1], key: "how many objects?"}).encode(),
             b"[1, 2]",                                                             # not an object
             json.dumps({"image": good[0]}).encode(),                               # key missing
             json.dumps({"image": 5, key: 7}).encode(),                             # wrong types
             b'{"image": "x.png", "' + key.encode() + b'": "caf\xe9"}',             # not UTF-8
             json.dumps({"image": bad["missing"], key: "is it red?"}).encode(),     # no such image
             json.dumps({"image": bad["broken"], key: "is it red?"}).encode(),      # truncated image
             json.dumps({"image": good[1], key: "  is there a [/] square?  "}).encode()]  # rich markup: just text
    path.write_bytes(b"\n".join(lines) + b"\n")


REQUEST_ROWS = [OK, ":2: question is empty", ":3: not JSON", ":4: question holds \\ud800", OK, ":6: not a JSON object",
                ":7: missing question", ":8: question should be text", ":9: not UTF-8", "missing.png: no such image",
                "broken.png: corrupt or truncated", OK]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The user's folder: a small shapes world, tiny checkpoints, and every kind of bad file."""
    root = tmp_path_factory.mktemp("corpus")
    world = root / "world"
    shapes.generate(world, splits={"train": 24, "val": 8}, seed=0, size=32, workers=1)
    paths = {"root": str(root), "world": str(world)}
    for name in ("vqa-tiny", "clip-tiny", "captioner-tiny", "translator-tiny", "grounder-tiny"):
        torch.manual_seed(0)
        recipe = get_recipe(name)
        paths[name.split("-")[0]] = str(save_checkpoint(root / "models" / name, polymodal.create_model(name),
                                                        Processor.from_spec(recipe["processor"]), recipe=name,
                                                        task=recipe["task"]))
    corrupt = root / "models" / "corrupt"                  # a checkpoint whose weights file is cut short
    shutil.copytree(paths["vqa"], corrupt)
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:1000])
    paths["corrupt"] = str(corrupt)
    imgs = root / "imgs"                                   # a folder of images, some of them bad
    imgs.mkdir()
    for k in range(2):
        shutil.copy(world / "images" / f"{k:06d}.png", imgs / f"good{k}.png")
    (imgs / "broken.png").write_bytes((world / "images" / "000002.png").read_bytes()[:60])
    (imgs / "empty.png").write_bytes(b"")
    (imgs / "notes.png").write_text("not an image at all")
    (imgs / "huge.png").write_bytes(_png_header(60_000, 60_000))
    (imgs / "readme.txt").write_text("my notes")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    good = [str(imgs / "good0.png"), str(imgs / "good1.png")]
    bad = {"missing": str(root / "missing.png"), "broken": str(imgs / "broken.png")}
    _requests(root / "ask.jsonl", "question", good, bad)
    _requests(root / "translate.jsonl", "text", good, bad)
    (root / "blank.jsonl").write_text("\n  \n")

    # a caption manifest with bad records among good ones
    recs = [json.loads(x) for x in (world / "captions_train.jsonl").read_text().splitlines()]
    lines = []
    for k, r in enumerate(recs[:16]):
        r = {"id": r["id"], "image": str(world / r["image"]), "captions": r["captions"]}
        if k == 3:
            del r["captions"]                               # no caption
        if k == 5:
            r["image"] = bad["missing"]
        if k == 7:
            r["image"] = bad["broken"]
        lines.append(json.dumps(r))
    lines.insert(9, "{broken line")
    lines.append(json.dumps({"id": recs[0]["id"], "image": str(world / recs[0]["image"]), "captions": ["again"]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "all_bad.jsonl").write_text(lines[3] + "\n" + lines[5] + "\n{broken\n")
    (root / "other_scores.jsonl").write_text(json.dumps({"id": "not-in-this-data", "score": 0.5}) + "\n")

    # training configs, good and bad; `train` writes only under the --output-dir the case gives
    good_cfg = {"task": "captioning", "model": {"recipe": "captioner-tiny", "processor": {"image": {"image_size": 32}}},
                "data": {"train": f"jsonl:{root / 'captions.jsonl'}", "val": f"jsonl:{root / 'captions.jsonl'}"},
                "optim": {"max_steps": 2, "batch_size": 4},
                "checkpointing": {"every": 0, "keep_last": 1},
                "logging": {"every": 1, "progress": False, "plot": False, "tensorboard": False}}
    configs = root / "configs"
    configs.mkdir()
    (configs / "good.yaml").write_text(yaml.safe_dump(good_cfg) + "precision: no\n")  # `no` unquoted, as documented
    for name, edit in BAD_CONFIGS.items():
        cfg = json.loads(json.dumps(good_cfg))
        if callable(edit):
            edit(cfg)
            (configs / f"{name}.yaml").write_text(yaml.safe_dump(cfg) + "precision: no\n")
        else:
            (configs / f"{name}.yaml").write_text(edit)
    paths["configs"] = str(configs)

    gen = root / "generated"                               # an earlier `data generate`, plus the user's notes
    shapes.generate(gen, splits={"train": 4}, seed=0, size=16, workers=1)
    (gen / "notes.txt").write_text("my notes on this data")
    paths.update(imgs=str(imgs), empty=str(root / "empty"), good0=good[0], good1=good[1], gen=str(gen),
                 captions=str(root / "captions.jsonl"), other_scores=str(root / "other_scores.jsonl"), ask_req=str(root / "ask.jsonl"),
                 translate_req=str(root / "translate.jsonl"), missing=bad["missing"],
                 broken=bad["broken"], huge=str(imgs / "huge.png"), marker=str(root / "pipe-ran"))
    return paths


def _set(path: str, value):
    def edit(cfg):
        node = cfg
        for key in path.split(".")[:-1]:
            node = node.setdefault(key, {})
        node[path.split(".")[-1]] = value
    return edit


BAD_CONFIGS = {
    "batch0": _set("optim.batch_size", 0), "accum0": _set("optim.grad_accum", 0), "lr_neg": _set("optim.lr", -0.1),
    "workers_neg": _set("data.num_workers", -1), "steps_neg": _set("optim.max_steps", -5),
    "epochs_neg": _set("optim.epochs", -1), "every_neg": _set("checkpointing.every", -1),
    "recipe": _set("model.recipe", "no-such-recipe"), "unknown_key": _set("optim.learning_rate", 0.1),
    "pipe": _set("data.train", "wds:pipe:touch MARKER"),
    "all_bad": lambda cfg: cfg["data"].update(train=cfg["data"]["train"].replace("captions", "all_bad")),
    "duplicate": "model: {recipe: captioner-tiny}\noptim: {lr: 0.1}\ntask: captioning\noptim: {batch_size: 4}\n",
    "not_yaml": "model: {recipe: captioner-tiny\n",
    "a_list": "- model\n- optim\n",
    "precision_typo": "model: {recipe: captioner-tiny}\nprecision: maybe\n",
}

CASES = [
    # ---- requests: each bad line fails alone, the good ones are answered ------------------------
    Case("ask-requests", ["ask", "--model", "{vqa}", "--requests", "{ask_req}", "--json", "--batch-size", "4"], 1,
         rows=REQUEST_ROWS),
    Case("ask-requests-table", ["ask", "--model", "{vqa}", "--requests", "{ask_req}"], 1,
         says=["not UTF-8", "[/] square"]),
    Case("translate-requests", ["translate", "--model", "{translator}", "--requests", "{translate_req}", "--json",
                                "--max-tokens", "3"], 1,
         rows=[r.replace("question", "text") for r in REQUEST_ROWS]),
    Case("ground-requests", ["ground", "--model", "{grounder}", "--requests", "{translate_req}", "--json",
                             "--batch-size", "4"], 1, rows=[r.replace("question", "text") for r in REQUEST_ROWS]),
    Case("ground-empty-text", ["ground", "--model", "{grounder}", "--image", "{good0}", "--text", " ", "--json"], 1,
         rows=["text is empty"]),
    Case("ground-bad-threshold", ["ground", "--model", "{grounder}", "--image", "{good0}", "--text", "circles",
                                  "--threshold", "2"], 2, says=["threshold"]),
    Case("ground-with-a-vqa-model", ["ground", "--model", "{vqa}", "--image", "{good0}", "--text", "circles", "--json"],
         1, rows=["cannot ground"]),
    Case("ask-empty-question", ["ask", "--model", "{vqa}", "--image", "{good0}", "--question", " ", "--json"], 1,
         rows=["question is empty"]),
    Case("ask-surrogate-argument", ["ask", "--model", "{vqa}", "--image", "{good0}", "--question", "a\udcff", "--json"],
         1, rows=["lone surrogate"]),
    Case("ask-no-question", ["ask", "--model", "{vqa}", "--image", "{good0}"], 2, says=["give --image and --question"]),
    Case("ask-both-inputs", ["ask", "--model", "{vqa}", "--requests", "{ask_req}", "--image", "{good0}",
                             "--question", "x"], 2, says=["not both"]),
    Case("ask-requests-missing-file", ["ask", "--model", "{vqa}", "--requests", "{missing}.jsonl"], 2,
         says=["cannot read the requests file"]),
    Case("ask-blank-requests-file", ["ask", "--model", "{vqa}", "--requests", "{root}/blank.jsonl"], 2,
         says=["no requests in this file"]),
    Case("ask-captioner", ["ask", "--model", "{captioner}", "--image", "{good0}", "--question", "why?", "--json"], 1,
         rows=["is a captioner; it cannot answer questions"]),
    Case("explain-no-text", ["explain", "--model", "{vqa}", "--image", "{good0}"], 2,
         says=["exactly one of --question, --text or --caption"]),
    Case("explain-broken-image", ["explain", "--model", "{vqa}", "--image", "{broken}", "--question", "why?"], 2,
         says=["broken.png"]),
    Case("explain-unknown-method", ["explain", "--model", "{vqa}", "--image", "{good0}", "--question", "why?",
                                    "--method", "lime"], 2, says=["unknown explanation method 'lime'"]),
    Case("explain-measure-without-data", ["explain", "--model", "{vqa}", "--pointing-game"], 2, says=["give --data"]),
    # ---- images: each bad file fails alone ------------------------------------------------------
    Case("caption-folder", ["caption", "--model", "{captioner}", "{imgs}", "--json", "--max-tokens", "3"], 1,
         rows=["broken.png: corrupt", "empty.png: not an image", OK, OK, "huge.png: refused as a decompression bomb",
               "notes.png: not an image"]),
    Case("caption-missing-and-glob", ["caption", "--model", "{captioner}", "{missing}", "{root}/nothing-*.png",
                                      "{good0}", "--json", "--max-tokens", "3"], 1,
         rows=["no such image file", "no file matches this pattern", OK]),
    Case("caption-empty-folder", ["caption", "--model", "{captioner}", "{empty}", "--json"], 1,
         rows=["no image files in this folder"]),
    Case("caption-batch-size-0", ["caption", "--model", "{captioner}", "{good0}", "--batch-size", "0"], 2,
         says=["--batch-size"]),
    Case("caption-beams-0", ["caption", "--model", "{captioner}", "{good0}", "--beams", "0"], 2, says=["--beams"]),
    Case("caption-temperature-0", ["caption", "--model", "{captioner}", "{good0}", "--temperature", "0"], 2,
         says=["temperature must be > 0"]),
    Case("classify-folder", ["classify", "--model", "{clip}", "--labels", "red,blue", "{imgs}", "--json"], 1,
         rows=["broken.png", "empty.png", OK, OK, "huge.png", "notes.png"]),
    Case("classify-duplicate-labels", ["classify", "--model", "{clip}", "--labels", "red,blue,red", "{good0}"], 2,
         says=["label 'red' is given twice"]),
    Case("classify-no-labels", ["classify", "--model", "{clip}", "--labels", " , ", "{good0}"], 2,
         says=["--labels: give at least one label"]),
    Case("embed-texts", ["embed", "--model", "{clip}", "--text", "a red circle", "", "   ", "two squares"], 1,
         rows=[OK, "text is empty", "text is empty", OK]),
    Case("embed-images", ["embed", "--model", "{clip}", "{good0}", "{broken}"], 1, rows=[OK, "corrupt or truncated"]),
    Case("retrieve-bad-query", ["retrieve", "--model", "{clip}", "--images", "{imgs}", "--query", "", "--query",
                                "a red circle", "--top-k", "1", "--json"], 1,
         rows=["query is empty", OK]),
    Case("retrieve-empty-folder", ["retrieve", "--model", "{clip}", "--images", "{empty}", "--query", "x"], 2,
         says=["no readable images to index"]),
    Case("retrieve-top-k-0", ["retrieve", "--model", "{clip}", "--images", "{imgs}", "--query", "x", "--top-k", "0"], 2,
         says=["--top-k"]),
    # ---- models ---------------------------------------------------------------------------------
    Case("model-missing", ["caption", "--model", "{missing}", "{good0}"], 2, says=["neither a directory nor a recipe"]),
    Case("model-not-a-checkpoint", ["caption", "--model", "{imgs}", "{good0}"], 2, says=["no config.json"]),
    Case("model-corrupt-weights", ["ask", "--model", "{corrupt}", "--image", "{good0}", "--question", "x"], 2,
         says=["corrupt or unreadable safetensors file"]),
    # ---- training configs: one line naming the file, the key and what is allowed -----------------
    Case("train-batch-size-0", ["train", "{configs}/batch0.yaml", "-o", "{out}/run"], 2,
         says=["batch0.yaml: optim.batch_size: must be >= 1, got 0"]),
    Case("train-grad-accum-0", ["train", "{configs}/accum0.yaml", "-o", "{out}/run"], 2,
         says=["optim.grad_accum: must be >= 1, got 0"]),
    Case("train-negative-lr", ["train", "{configs}/lr_neg.yaml", "-o", "{out}/run"], 2,
         says=["optim.lr: must be >= 0, got -0.1"]),
    Case("train-negative-workers", ["train", "{configs}/workers_neg.yaml", "-o", "{out}/run"], 2,
         says=["data.num_workers: must be >= 0"]),
    Case("train-negative-max-steps", ["train", "{configs}/steps_neg.yaml", "-o", "{out}/run"], 2,
         says=["optim.max_steps: must be >= 1, got -5"]),
    Case("train-negative-epochs", ["train", "{configs}/epochs_neg.yaml", "-o", "{out}/run"], 2,
         says=["optim.epochs: must be >= 1"]),
    Case("train-negative-every", ["train", "{configs}/every_neg.yaml", "-o", "{out}/run"], 2,
         says=["checkpointing.every: must be >= 0"]),
    Case("train-set-zero", ["train", "{configs}/good.yaml", "--set", "optim.batch_size=0", "-o", "{out}/run"], 2,
         says=["optim.batch_size: must be >= 1", "after --set optim.batch_size=0"]),
    Case("train-unknown-recipe", ["train", "{configs}/recipe.yaml", "-o", "{out}/run"], 2,
         says=["recipe.yaml: model.recipe: unknown recipe 'no-such-recipe'"]),
    Case("train-unknown-key", ["train", "{configs}/unknown_key.yaml", "-o", "{out}/run"], 2,
         says=["unknown key 'optim.learning_rate'"]),
    Case("train-duplicate-key", ["train", "{configs}/duplicate.yaml", "-o", "{out}/run"], 2,
         says=["duplicate.yaml:4: key 'optim' is given twice (first on line 2)"]),
    Case("train-not-yaml", ["train", "{configs}/not_yaml.yaml"], 2, says=["not_yaml.yaml: not valid YAML"]),
    Case("train-a-list", ["train", "{configs}/a_list.yaml"], 2, says=["a run config is a mapping"]),
    Case("train-precision-typo", ["train", "{configs}/precision_typo.yaml"], 2,
         says=["precision: expected 'auto' | 'bf16' | 'fp16' | 'no', got 'maybe'"]),
    Case("train-missing-config", ["train", "{root}/nope.yaml"], 2, says=["no such config file"]),
    Case("train-pipe-refused", ["train", "{configs}/pipe.yaml", "-o", "{out}/run"], 2,
         says=["POLYMODAL_ALLOW_PIPE=1"]),
    # ---- bad records are skipped and counted, never fatal -----------------------------------------
    Case("train-skips-bad-records", ["train", "{configs}/good.yaml", "-o", "{out}/run", "--json"], 0,
         json=["skipped"], says=["missing field", "unreadable record"]),
    Case("eval-skips-bad-records", ["eval", "--model", "{captioner}", "--data", "jsonl:{captions}", "--task",
                                    "captioning", "--max-tokens", "3", "--json"], 0,
         json=["skipped"], says=["missing image", "unreadable image", "unreadable record", "missing field"]),
    Case("train-every-record-bad", ["train", "{configs}/all_bad.yaml", "-o", "{out}/run"], 2,
         says=["every record is bad", "1 missing field", "1 missing image", "1 unreadable record",
               "run `polymodal data validate`"]),
    # ---- data tools --------------------------------------------------------------------------------
    Case("validate-bad-records", ["data", "validate", "jsonl:{captions}", "--task", "captioning"], 1,
         says=["18 records, 13 ok, 5 bad", "duplicate id", "missing image", "unreadable image", "not JSON"]),
    Case("validate-missing-file", ["data", "validate", "jsonl:{missing}.jsonl"], 2, says=["no such JSONL file"]),
    Case("stats-bad-records", ["data", "stats", "jsonl:{captions}"], 0, says=["1 unreadable"]),
    Case("shard-bad-records", ["data", "shard", "jsonl:{captions}", "--out", "{out}/shards"], 0, says=["skipped"]),
    Case("tokenizer-bad-records", ["data", "tokenizer", "jsonl:{captions}", "--out", "{out}/tok", "--vocab-size", "200"],
         0),
    Case("generate-overwrite-keeps-notes", ["data", "generate", "shapes", "--out", "{gen}", "--n", "4", "--overwrite"],
         2, says=["also holds notes.txt", "nothing was deleted"]),
    Case("generate-not-empty", ["data", "generate", "shapes", "--out", "{imgs}", "--n", "4"], 2,
         says=["directory is not empty"]),
    Case("generate-n-0", ["data", "generate", "shapes", "--out", "{out}/g", "--n", "0"], 2, says=["--n"]),
    Case("generate-bad-split", ["data", "generate", "shapes", "--out", "{out}/g", "--split", "train=x"], 2,
         says=["is not a number"]),
    Case("eval-out-is-a-folder", ["eval", "--model", "{vqa}", "--data", "{world}", "--task", "vqa", "--split", "val",
                                  "--limit", "4", "--out", "{out}"], 2, says=["Is a directory"]),
    Case("shard-out-is-a-file", ["data", "shard", "jsonl:{captions}", "--out", "{captions}"], 2,
         says=["File exists"]),
    Case("pipe-spec-refused", ["data", "stats", "wds:pipe:touch {marker}"], 2, says=["POLYMODAL_ALLOW_PIPE=1"]),
    # ---- data quality: bad records are counted and reported, never a crash -----------------------
    Case("score-bad-records", ["data", "score", "jsonl:{captions}", "--out", "{out}/s.jsonl", "--no-progress"], 0,
         says=["missing image", "unreadable image", "empty text", "unreadable record"]),
    Case("score-no-such-spec", ["data", "score", "jsonl:{out}/nope.jsonl", "--out", "{out}/s.jsonl"], 2,
         says=["no such JSONL file"]),
    Case("filter-both-thresholds", ["data", "filter", "jsonl:{captions}", "--scores", "{other_scores}", "--out",
                                    "{out}/f.jsonl", "--min-score", "0.1", "--keep-top", "0.5"], 2,
         says=["exactly one of --min-score"]),
    Case("filter-no-threshold", ["data", "filter", "jsonl:{captions}", "--scores", "{other_scores}", "--out",
                                 "{out}/f.jsonl"], 2, says=["exactly one of --min-score"]),
    Case("filter-scores-of-other-data", ["data", "filter", "jsonl:{captions}", "--scores", "{other_scores}", "--out",
                                         "{out}/f.jsonl", "--min-score", "0.1", "--no-progress"], 2,
         says=["other_scores.jsonl", "has no row for"]),
    Case("filter-no-scores-file", ["data", "filter", "jsonl:{captions}", "--scores", "{out}/none.jsonl", "--out",
                                   "{out}/f.jsonl", "--keep-top", "0.5"], 2, says=["no such scores file"]),
    Case("dedup-bad-records", ["data", "dedup", "jsonl:{captions}", "--no-progress", "--json"], 0,
         json=["groups", "unreadable"]),
    Case("spec-duplicate-yaml-key", ["data", "stats", "{{format: jsonl, path: {captions}, path: x}}"], 2,
         says=["key 'path' is given twice"]),
]


def _snapshot(root: Path) -> dict:
    """Every file and folder under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, corpus, tmp_path):
    root = Path(corpus["root"])
    before = _snapshot(root)
    args = [a.format(**corpus, out=tmp_path) for a in case.args]
    res = runner.invoke(app, args, env={"POLYMODAL_CACHE": str(tmp_path / "cache"), **case.env})

    crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
    assert not crashed, "".join(traceback.format_exception(res.exception))
    assert "Traceback" not in res.output
    assert res.exit_code == case.code, res.output
    for text in case.says:
        assert text.format(**corpus) in res.output, res.output
    if case.rows is not None:
        rows = _json_lines(res.stdout)
        assert len(rows) == len(case.rows), res.stdout
        for row, want in zip(rows, case.rows):
            assert ("error" not in row) if want == OK else (want in row.get("error", "")), row
    if case.json:
        result = _json_lines(res.stdout)[-1]
        assert all(result.get(k) for k in case.json), result
    assert _snapshot(root) == before, "the command changed or deleted the user's files"
