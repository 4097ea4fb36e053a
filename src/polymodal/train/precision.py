"""Choosing the training precision: bf16 / fp16 / fp32, measured on CPUs where it depends on
the machine, and which accelerator (if any) this process has."""
from __future__ import annotations

import functools
import logging

import torch

from polymodal.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_precision(precision: str) -> str:
    """Accelerate's mixed_precision for a config value, or "measure" for "auto" on CPU.

    "auto": on a GPU bf16 where supported, else fp16 with loss scaling. On CPU whether bf16
    autocast pays depends on the model and the CPU (AMX or not, matrix sizes): measured on this
    development CPU (AVX512-BF16, no AMX), bf16 made the tiny recipes 15-35% slower and
    clip-small (224 px EfficientNet + MiniLM) 25% faster. So "auto" measures (`measure_bf16`).
    """
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs a GPU (loss scaling); on CPU use bf16 or no")
    if precision != "auto":
        return precision
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no" if has_accelerator() else "measure"


def measure_bf16(step, repeats: int = 2, gain: float = 0.9, clear: float = 2.0) -> str:
    """Time `step()` (forward + backward of one training batch) in fp32 and under CPU bf16
    autocast, alternating; "bf16" if that is at least 1/gain times faster, else "no".

    A round after the warm-up that finds one precision `clear` times slower than the other ends
    the measurement: a repeat would not change the choice, and on a CPU without a bf16 path a
    bf16 step costs ~10 fp32 steps. Draws no random numbers from the run's streams. Every process
    of a multi-process run measures all the rounds (their steps synchronise gradients); the summed
    times decide for all alike.
    """
    import time

    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    best = {"no": float("inf"), "bf16": float("inf")}
    with torch.random.fork_rng(devices=[]):
        for i in range(repeats + 1):
            for mode in ("no", "bf16"):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                    step()
                if i:  # the first round warms up (allocations, oneDNN kernels)
                    best[mode] = min(best[mode], time.perf_counter() - t0)
            if i and not distributed and max(best.values()) >= clear * min(best.values()):
                break
    times = torch.tensor([best["no"], best["bf16"]], dtype=torch.float64)
    if distributed:
        dist.all_reduce(times)
    log.info("one step: bf16 autocast %.1f ms, fp32 %.1f ms", 1e3 * times[1], 1e3 * times[0])
    return "bf16" if times[1] < gain * times[0] else "no"


@functools.lru_cache(maxsize=1)
def bf16_matmul_slowdown() -> float:
    """How many times slower a bf16 matmul (256 x 512 x 512) runs than an fp32 one on this CPU,
    measured once per process (~0.1 s with no bf16 path, a few ms with one)."""
    import time

    gen = torch.Generator().manual_seed(0)      # the run's random streams stay untouched
    a, b = torch.randn(256, 512, generator=gen), torch.randn(512, 512, generator=gen)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y                                   # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        best[dtype] = min(times)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


#: a bf16 matmul this many times slower than fp32 means the CPU has no bf16 path at all (measured:
#: 40-55x on an AMD EPYC without AVX512-BF16, where a bf16 training step ran 6x slower; 0.4-0.6x
#: with AVX512-BF16 / AMX): no model's step can gain from autocast, so "auto" skips its step test
NO_BF16_PATH = 8.0


def has_accelerator() -> bool:
    """A GPU (CUDA / ROCm), Apple MPS or Intel XPU device is usable."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and xpu.is_available()))


def cpu_has_amx() -> bool:
    """Whether this process may use the AMX tile unit (asks the kernel for permission once)."""
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except RuntimeError:
        return False
