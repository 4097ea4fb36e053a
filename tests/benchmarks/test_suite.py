"""Every benchmark of `python -m benchmarks` runs at a tiny size and returns what the report
needs; correctness is asserted (identical captions, FLOPs counted, every contender measured),
never speed."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.common import SIZES  # noqa: E402

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow
def test_train_measures_every_contender_against_the_plain_loop(work):
    from benchmarks import train

    res = train.run(TINY, work)
    assert set(res) == {"demo-vqa", "demo-captioner", "shapes-retrieval", "shapes-caption"}
    for recipe, v in res.items():
        got = v["results"]
        assert got["plain"]["ratio"] == 1.0 and "polymodal" in got
        assert {k for k in got if k.startswith("polymodal, ")} == {f"polymodal, {label}" for label, _ in
                                                                  train.LEVERS[recipe]}
        assert all(x["median"] > 0 and len(x["values"]) == TINY.repeats for x in got.values())
    md = report.markdown(_wrap("train", res))
    assert "| `demo-vqa` | plain |" in md and "data.captions_per_image=5" in md


def test_caption_rows_and_identical_captions(work):
    from benchmarks import caption

    res = caption.run(TINY, work)
    rows = res["rows"]
    assert {"transformers b1", "transformers b2", "transformers b4", "polymodal b2", "polymodal b4"} <= set(rows)
    # polymodal's beam search is exact: the captions equal transformers', token for token
    assert all(r["same_captions"] == 1.0 for k, r in rows.items() if k.startswith("polymodal b") and "," not in k)
    assert all(0 <= r["same_captions"] <= 1 and r["images_per_s"] > 0 for r in rows.values())
    assert res["best_against_best"] > 0 and "Best against best" in report.markdown(_wrap("caption", res))


def test_embed_and_query_against_index_size(work):
    from benchmarks import embed

    res = embed.run(TINY, work)
    assert set(res["query"]) == set(TINY.index_sizes) and all(v["ms"] > 0 for v in res["query"].values())
    assert all(v["images_per_s"] > 0 and v["texts_per_s"] > 0 for v in res["embed"].values())
    assert "ms per query" in report.markdown(_wrap("embed", res))


def test_mfu_counts_flops_and_profiles(work):
    from benchmarks import mfu

    res = mfu.run(TINY, work)
    for v in res["models"].values():
        assert v["flops_per_step"] > 1e6 and 0 < v["mfu"] and v["precision"] in ("fp32", "bf16")
        assert len(v["top_ops"]) == 10 and all(o["op"] and o["self_ms"] >= 0 for o in v["top_ops"])
    assert res["peak_flops"]["fp32"] > 0 and "Top operators" in report.markdown(_wrap("mfu", res))


def test_scaling_points(work):
    from benchmarks import scaling

    res = scaling.run(TINY, work)
    assert list(res["images"]) == [8, 2] and all(v > 0 for k in ("image size", "sequence length", "batch size")
                                                 for v in res[k].values())
    assert "How the cost grows" in report.markdown(_wrap("scaling", res))


@pytest.mark.slow
def test_the_whole_suite_writes_the_report(tmp_path):
    """`python -m benchmarks --size tiny` end to end (DDP with two processes included)."""
    out = tmp_path / "b.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--size", "tiny", "--out", str(out),
                           "--work", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out.read_text()
    for title in ("## Training", "## Captioning", "## Embedding", "## Model FLOPs", "## How the cost", "## Past one"):
        assert title in md
    assert "peak memory" in md and (tmp_path / "b.md.json").is_file()


def _wrap(name: str, result: dict) -> dict:
    from benchmarks.common import machine

    return {"machine": machine(), "size": "tiny", "note": "", "command": "python -m benchmarks", "started": "now",
            "benchmarks": {name: {"result": result, "seconds": 1.0, "peak_rss_mb": 1.0}}}
