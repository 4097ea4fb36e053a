"""Parameter count and CPU speed of every registered fusion at realistic sizes.

    PYTHONPATH=src python benchmarks/fusion_modules.py [--dim 256] [--batch 32] [--threads 2]

Defaults match the embedded encoders: EfficientNet-Lite0 (7x7 = 49 tokens of 1280-d) and
all-MiniLM-L6-v2 (384-d, 32 text tokens, padded). Times are the best of `--reps` runs, in ms.
"""
from __future__ import annotations

import argparse
import time

import torch

from polymodal.models import fusion  # noqa: F401  (registers the fusions)
from polymodal.models.base import Features
from polymodal.registry import FUSIONS


def best_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--image-dim", type=int, default=1280)
    ap.add_argument("--text-dim", type=int, default=384)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-tokens", type=int, default=49)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    B, N, T = args.batch, args.image_tokens, args.text_tokens
    image = Features(torch.randn(B, N, args.image_dim), torch.ones(B, N, dtype=torch.bool),
                     torch.randn(B, args.image_dim))
    text_mask = torch.arange(T)[None] < torch.randint(T // 4, T + 1, (B,))[:, None]
    text = Features(torch.randn(B, T, args.text_dim), text_mask, torch.randn(B, args.text_dim))

    cases = [(name, {}) for name in FUSIONS.names()] + [("attention", {"co_attention": True})]
    print(f"B={B} N={N} T={T} image_dim={args.image_dim} text_dim={args.text_dim} dim={args.dim} "
          f"threads={args.threads}")
    print(f"{'fusion':30s} {'params':>10s} {'fwd fp32':>9s} {'fwd bf16':>9s} "
          f"{'f+b fp32':>9s} {'f+b bf16':>9s}")
    for name, kwargs in cases:
        m = FUSIONS.build({"type": name, "dim": args.dim, **kwargs}, "benchmark",
                          image_dim=args.image_dim, text_dim=args.text_dim)
        params = sum(p.numel() for p in m.parameters())
        row = []
        for train in (False, True):
            for dtype in (torch.float32, torch.bfloat16):
                def step():
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
                        with torch.set_grad_enabled(train):
                            out = m(image, text)
                    if train:
                        (out.tokens.float().square().mean() + out.pooled.float().square().mean()).backward()
                row.append(best_ms(step, args.reps))
        label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
        print(f"{label:30s} {params:>10,d} " + " ".join(f"{t:9.1f}" for t in row))


if __name__ == "__main__":
    main()
