"""`polymodal demo --quick` end to end: every stage runs, the report renders the numbers of the
metrics JSON files, and a rerun reuses the finished stages."""
import json
import re

import pytest
from typer.testing import CliRunner

from polymodal.cli import app

pytestmark = pytest.mark.slow


def test_quick_demo_writes_a_report_matching_the_metrics(tmp_path):
    out = tmp_path / "demo-out"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert "<img src='data:image/png;base64," in page and "http" not in page.split("<body>")[1].split("Reproduce")[0]
    assert "What the models looked at" in page and page.count("alt='heat map") == 5   # 3 questions, 2 captions
    from polymodal.report import metrics_rows

    rows = metrics_rows(out)
    assert {r["task"] for r in rows} == {"vqa", "captioning", "captioning (Chinese)", "retrieval", "grounding", "detection"}
    assert "<h2>Grounding and detection</h2>" in page
    for r in rows:  # every number in the table is the JSON's, as printed
        value = "–" if r["value"] is None else f"{r['value']:.3f}"
        assert re.search(rf"<td>{re.escape(r['metric'])}</td><td class='num[^']*'>{re.escape(value)}</td>", page)
    vqa = json.loads((out / "metrics" / "vqa_test.json").read_text())
    assert vqa["n"] > 0 and "baseline" in vqa
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0 and again.output.count("skipped") >= 8
