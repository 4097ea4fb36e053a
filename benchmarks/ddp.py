"""Past one process: the demo's VQA recipe trained by `python -m polymodal.train` (1 process)
and by `accelerate launch --num_processes 2 -m polymodal.train` (DDP, gloo on CPU), same
per-process batch, alternating; samples/s of the global batch from each run's metrics.jsonl
(steady state: the first `skip` logged steps left out).

Each process gets `cores / processes` threads, so the two runs use the same cores.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import Size


def _launch(config: Path, processes: int, out: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if processes == 1:
        cmd = [sys.executable, "-m", "polymodal.train", str(config), "--output-dir", str(out)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu",
               "-m", "polymodal.train", str(config), "--output-dir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["samples_per_s"] for r in rows if "samples_per_s" in r]


def run(size: Size, work: Path) -> dict:
    from benchmarks.train import recipes

    cfg = recipes(work, size)["demo-vqa"]
    cfg["optim"]["max_steps"] = size.ddp_steps
    cfg["precision"] = "no"
    config = work / "ddp-vqa.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cores = os.cpu_count() or 1
    got: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(size.repeats):
        for n in (1, 2):
            rates = _launch(config, n, work / "runs" / f"ddp{n}-{time.time_ns()}", max(1, cores // n))
            steady = rates[min(size.skip, len(rates) - 1):]
            got[n].append(statistics.median(steady))
    med = {n: statistics.median(v) for n, v in got.items()}
    return {"recipe": "demo-vqa", "per_process_batch": size.batch, "steps": size.ddp_steps, "cores": cores,
            "samples_per_s": med, "values": got, "scaling": med[2] / med[1]}
