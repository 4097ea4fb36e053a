"""`python -m benchmarks`: run every benchmark, each in its own process, and write docs/benchmarks.md.

    PYTHONPATH=src python -m benchmarks                      # the full suite (~15 min, 2 cores)
    PYTHONPATH=src python -m benchmarks --only train caption  # some of it
    PYTHONPATH=src python -m benchmarks --size tiny --out /tmp/b.md   # does every benchmark run?

Benchmarks (one module each, `run(size, work) -> dict`): train (polymodal vs a plain
`transformers.Trainer`, with lever rows), caption (vs transformers' processor + `generate`),
embed (embedding throughput, query time against index size), mfu (model FLOPs utilisation and
the profiler's top operators), scaling (cost against image size, sequence length, batch size
and images per batch), ddp (1 vs 2 processes). The raw results go to `<out>.json` beside the
Markdown.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import SIZES, machine, peak_rss_mb, to_json

BENCHMARKS = ("train", "caption", "embed", "mfu", "scaling", "ddp")


def run_one(name: str, size: str, work: Path) -> dict:
    """Run benchmark `name` in this process; its result, seconds and peak memory."""
    import importlib
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    mod = importlib.import_module(f"benchmarks.{name}")
    t = time.perf_counter()
    result = mod.run(SIZES[size], work)
    return {"result": result, "seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    ap.add_argument("--out", default="docs/benchmarks.md", help="the Markdown report (raw results: OUT.json)")
    ap.add_argument("--work", default=None, help="scratch directory (data, runs); default: a temporary one")
    ap.add_argument("--note", default="", help="a line for the top of the report (e.g. 'taken under load')")
    ap.add_argument("--one", help=argparse.SUPPRESS)         # internal: run one benchmark here
    ap.add_argument("--json", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        Path(a.json).write_text(to_json(run_one(a.one, a.size, Path(a.work))))
        return
    with tempfile.TemporaryDirectory(prefix="polymodal-bench-") as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = {"machine": machine(), "size": a.size, "note": a.note,
                   "command": "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
                   "started": time.strftime("%Y-%m-%d %H:%M"), "benchmarks": {}}
        for name in a.only:
            out = work / f"{name}.json"
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "benchmarks", "--one", name, "--size", a.size,
                                   "--work", str(work), "--json", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"benchmark {name} failed (exit {proc.returncode})")
            results["benchmarks"][name] = json.loads(out.read_text())
            print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        results["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report.markdown(results))
    Path(a.out + ".json").write_text(to_json(results))
    print(f"wrote {a.out} and {a.out}.json")


if __name__ == "__main__":
    main()
