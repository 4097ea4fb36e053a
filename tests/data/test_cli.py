"""`polymodal data generate|validate|stats|shard`, through typer's CliRunner."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from polymodal.data.cli import app

runner = CliRunner()


def _json(result) -> dict:
    assert result.output.strip(), result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_generate_validate_stats_shard(tmp_path):
    out = tmp_path / "world"
    r = runner.invoke(app, ["generate", "shapes", "--out", str(out), "--n", "50", "--seed", "4", "--size", "48",
                            "--split", "train=30,test=10,comp=10", "--preview", str(tmp_path / "p.png"), "--json"])
    assert r.exit_code == 0, r.output
    meta = _json(r)
    assert meta["splits"] == {"train": 30, "test": 10, "comp": 10} and meta["records"]["train"]["captions"] == 30
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert json.loads((out / "meta.json").read_text())["size"] == 48

    r = runner.invoke(app, ["validate", f"shapes:{out}:vqa", "--split", "test", "--task", "vqa", "--json"])
    assert r.exit_code == 0, r.output
    report = _json(r)
    assert report["bad"] == 0 and report["images"] == 10

    r = runner.invoke(app, ["stats", f"shapes:{out}:vqa:train"])
    assert r.exit_code == 0 and "question_type (6 distinct)" in r.output and "48-48" in r.output

    r = runner.invoke(app, ["shard", f"shapes:{out}:captions:train", "--out", str(tmp_path / "sh"),
                            "--maxcount", "8", "--json"])
    assert r.exit_code == 0, r.output
    sh = _json(r)
    assert sh["records"] == 30 and len(sh["shards"]) == 4
    r = runner.invoke(app, ["stats", sh["spec"], "--json"])
    assert _json(r)["records"] == 30


def test_validate_fails_with_the_offending_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "nope.png", "caption": "x"}) + "\n"
                                      + json.dumps({"image": "nope.png", "caption": ""}) + "\n")
    r = runner.invoke(app, ["validate", f"jsonl:{tmp_path}/m.jsonl"])
    assert r.exit_code == 1
    assert "2 records, 0 ok, 2 bad" in r.output and "m.jsonl:1" in r.output and "m.jsonl:2: " in r.output
    assert "caption is empty" in r.output


def test_user_errors_exit_2_with_a_message(tmp_path):
    r = runner.invoke(app, ["generate", "mnist", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown generator 'mnist'" in r.output
    r = runner.invoke(app, ["stats", "csv:foo.csv"])
    assert r.exit_code == 2 and "unknown format 'csv'" in r.output
    r = runner.invoke(app, ["generate", "shapes", "--out", str(tmp_path / "y"), "--split", "train"])
    assert r.exit_code == 2 and "NAME=FRACTION" in r.output
