"""The fusion comparison (polymodal compare-fusions): one VQA run per fusion module on the same
data and budget, a row of numbers per module, and the markdown table sorted by accuracy."""
import json

from polymodal.compare import compare_fusions, markdown_table
from polymodal.data.shapes import generate


def test_compare_fusions_trains_evaluates_and_tabulates_each_module(tmp_path):
    data = tmp_path / "data"
    generate(data, n=60, size=32, splits={"train": 40, "val": 8, "test": 6, "comp": 6}, workers=1)
    rows = compare_fusions(str(data), tmp_path / "out", steps=2, seeds=[0], fusions=["concat", "gated"], dim=32,
                           batch_size=8, eval_limit=6)
    assert [r["fusion"] for r in rows] == ["concat", "gated"]
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["comp_accuracy"] <= 1.0
        assert 0 < r["fusion_params"] < r["params"] and r["latency_ms"] > 0
        assert r["runs"][0]["seed"] == 0 and r["test_accuracy_spread"] == 0.0
        assert set(r["per_type"]) <= {"color", "shape", "count", "exist", "relation", "size"}
    saved = json.loads((tmp_path / "out" / "fusion_comparison.json").read_text())
    assert [r["fusion"] for r in saved] == ["concat", "gated"]
    table = (tmp_path / "out" / "fusion_comparison.md").read_text()
    assert "`concat`" in table and "`gated`" in table


def test_markdown_table_sorts_by_accuracy_and_shows_the_spread():
    row = {"per_type": {"color": 0.5}, "comp_accuracy": 0.25, "params": 2_000_000, "fusion_params": 500_000,
           "train_samples_per_s": 120.0, "latency_ms": 3.25}
    rows = [{**row, "fusion": "concat", "test_accuracy": 0.5, "test_accuracy_spread": 0.1},
            {**row, "fusion": "attention", "test_accuracy": 0.75, "test_accuracy_spread": 0.2}]
    lines = markdown_table(rows, steps=600, batch_size=64, seeds=[0, 1]).splitlines()
    assert lines[0].startswith("VQA on shapes world, 600 steps x batch 64, seeds 0, 1")
    assert lines[2] == "| fusion | test acc | comp acc | color | params (fusion) | train samples/s | latency ms |"
    assert lines[4] == "| `attention` | 0.750 ± 0.100 | 0.250 | 0.500 | 2.00M (0.50M) | 120 | 3.2 |"
    assert lines[5].startswith("| `concat` | 0.500 ± 0.050 |")
