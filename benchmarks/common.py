"""What every benchmark of the suite shares: sizes, the shapes world it trains on, alternating
timers with medians, machine details and peak memory.

A benchmark is a function `run(size: Size, work: Path) -> dict` in its own module; the suite
(`python -m benchmarks`) runs each in a fresh subprocess, so start-up state (Accelerate, oneDNN
kernel caches, allocator) never leaks from one comparison into the next, and the peak memory of
the subprocess is the benchmark's own. Inside a benchmark the contenders of a comparison
alternate (`alternate`), so load from elsewhere on the machine hits them alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Size:
    """How much work each benchmark does. `full` regenerates docs/benchmarks.md in ~15 minutes on
    2 CPU cores; `tiny` only checks that every benchmark runs (the tests)."""

    name: str
    images: int            # shapes-world images generated for the training / embedding data
    train_steps: int       # optimizer steps per training measurement
    skip: int              # first steps left out (start-up, first allocations)
    batch: int             # training batch size (the demo's: 64)
    repeats: int           # alternating rounds per comparison
    caption_images: int    # images captioned per captioning measurement
    caption_batches: tuple = (8, 16, 32)
    caption_model: str = "small"   # ViT-GPT-2 size: small (384-d, 6 layers) | micro (tests)
    index_sizes: tuple = (1_000, 10_000, 100_000)
    matmul: int = 2048     # side of the square matmul that measures peak FLOP/s
    ddp_steps: int = 30


SIZES = {
    "full": Size("full", images=1200, train_steps=24, skip=4, batch=64, repeats=3, caption_images=32),
    "tiny": Size("tiny", images=40, train_steps=3, skip=1, batch=8, repeats=1, caption_images=4,
                 caption_batches=(2, 4), caption_model="micro", index_sizes=(100, 1_000), matmul=256,
                 ddp_steps=4),
}


def shapes_world(work: Path, n: int) -> tuple[Path, Path]:
    """A shapes world of `n` 64-px images and a tokenizer fitted to it (as `polymodal demo` makes
    them), made once under `work` and reused by the benchmarks of one suite run."""
    from polymodal.data import shapes
    from polymodal.data.tools import fit_tokenizer

    data, tok = work / f"shapes-{n}", work / f"tokenizer-{n}"
    if not (data / "meta.json").is_file():
        shapes.generate(data, n=n, seed=0, overwrite=True)
    if not (tok / "tokenizer.json").is_file():
        specs = [f"shapes:{data}:{t}" for t in ("captions", "vqa", "classify", "translate")]
        fit_tokenizer(specs, tok, split="train", vocab_size=2000)
    return data, tok


def alternate(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run each contender once per round, in turn, `repeats` rounds; {name: {median, values}}.

    Each contender returns its own measurement (e.g. samples/s); rounds interleave them so a
    burst of load from elsewhere hits every contender, not one."""
    got: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            got[name].append(fn())
    return {k: {"median": statistics.median(v), "values": [round(x, 4) for x in v]} for k, v in got.items()}


def paired_ratio(values: list[float], base: list[float]) -> float:
    """The median over rounds of value / base of the same round: a burst of load that slows one
    whole round cancels, which it does not in a ratio of the two medians."""
    return statistics.median(v / b for v, b in zip(values, base))


def timed(fn: Callable, repeats: int = 3, warmup: int = 1) -> tuple[float, object]:
    """(median seconds of `fn()` over `repeats` calls after `warmup` calls, the last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux: ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    try:
        mem = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                       if ln.startswith("MemTotal")).split()[1]) / 2 ** 20
    except (OSError, StopIteration):
        mem = 0.0
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "memory_gb": round(mem, 1), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_average_1m": round(load[0], 2), "os": platform.platform()}


def to_json(obj) -> str:
    return json.dumps(obj, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
