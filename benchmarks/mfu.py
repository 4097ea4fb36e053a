"""Model FLOPs utilisation of training: the FLOPs of one training step (forward + backward,
counted by `torch.utils.flop_counter.FlopCounterMode`) over its time, against the peak matmul
FLOP/s measured in the same process on this machine (one square matmul, fp32 and bf16), for the
precision that runs the step faster. A `torch.profiler` table of the step's top operators
says where the rest of the time goes.

Models: the demo's VQA model and captioner (benchmarks/train.py's recipes) on one real batch.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import Size


def peak_matmul(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of an n x n @ n x n matmul in `dtype` (median of `repeats` after a warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def _prepared(cfg: dict, work: Path):
    from polymodal.train.optim import adamw, param_groups
    from polymodal.train.trainer import prepare_run

    r = prepare_run(dict(cfg, precision="no"), output_dir=str(work / "runs" / f"mfu-{time.time_ns()}"))
    from polymodal.train import _data

    groups = _data.image_keys(r.train_set) if r.cfg.data.group_by_image else None
    idx = next(iter(_data.EpochBatches(len(r.train_set), r.cfg.optim.batch_size, 1, 0, 0, 0, groups=groups)))
    batch = r.collate([r.train_set[i] for i in idx])
    opt = adamw(param_groups(r.model, 0.01), lr=1e-4)
    r.model.train()
    return r, batch, opt


def run(size: Size, work: Path) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.train import recipes
    from polymodal.train.trainer import losses

    peaks = {"fp32": peak_matmul(size.matmul, torch.float32), "bf16": peak_matmul(size.matmul, torch.bfloat16)}
    out = {"matmul_n": size.matmul, "peak_flops": peaks, "models": {}}
    cfgs = recipes(work, size)
    for name in ("demo-vqa", "demo-captioner"):
        r, batch, opt = _prepared(cfgs[name], work)

        def step(bf16: bool):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with ctx:
                loss, _ = losses(r.objectives, r.model, dict(batch))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with FlopCounterMode(display=False) as counter:
            loss, _ = losses(r.objectives, r.model, dict(batch))
            loss.backward()
        r.model.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
        secs = {"fp32": [], "bf16": []}
        step(False), step(True)  # warm-up
        for _ in range(max(3, size.repeats)):
            for prec in ("fp32", "bf16"):
                t = time.perf_counter()
                step(prec == "bf16")
                secs[prec].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in secs.items()}
        best = min(med, key=med.get)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(best == "bf16")
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
        out["models"][name] = {
            "batch": int(batch["pixel_values"].shape[0]), "records": len(batch["ids"]), "flops_per_step": flops,
            "step_s": med, "precision": best, "achieved_flops": flops / med[best],
            "mfu": flops / med[best] / peaks[best],
            "mfu_fp32_peak": flops / med[best] / peaks["fp32"],
            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                         "calls": e.count} for e in top],
        }
    return out
