"""Serving under load: requests/s and p50/p95 latency against concurrency, with and without
dynamic batching, through a real `polymodal serve` process.

For each mode the script starts `polymodal serve --model MODEL` on a free loopback port
(`batching`: --max-batch 16 --max-wait-ms 10; `no batching`: --max-batch 1), waits for
`/health`, and for each concurrency C runs C closed-loop clients (each sends its next request
when the last one is answered) until `--requests` requests are answered: POST /caption with one
image (multipart), or POST /answer with `--task answer`. Every request must come back 200; the
server's own count of batches and their mean size is read from `/info`.

Usage: python benchmarks/serve_load.py [--model captioner-tiny] [--task caption|answer]
         [--requests 96] [--concurrency 1 4 16 32] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image

MODES = {"no batching": ["--max-batch", "1"], "batching": ["--max-batch", "16", "--max-wait-ms", "10"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int, size: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def start_server(model: str, flags: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", "from polymodal.cli import main; main()", "serve", "--model", model,
                             "--port", str(port), "--log-level", "warning", *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not get ready in 180 s")
        time.sleep(0.2)


async def load(url: str, task: str, images: list[bytes], n: int, concurrency: int) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    counter = iter(range(n))

    async def client(c: httpx.AsyncClient):
        for i in counter:
            files = {"image": ("x.png", images[i % len(images)], "image/png")}
            data = {"question": "what colour is the circle?"} if task == "answer" else {}
            t = time.perf_counter()
            res = await c.post(f"/{task}", files=files, data=data)
            latencies.append(time.perf_counter() - t)
            statuses.append(res.status_code)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        before = (await c.get("/info")).json()["batching"]
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = (await c.get("/info")).json()["batching"]
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    return {"concurrency": concurrency, "requests": n, "ok": statuses.count(200), "req_per_s": n / wall,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p95_ms": 1000 * float(np.percentile(latencies, 95)),
            "batches": batches, "mean_batch": items / batches if batches else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="captioner-tiny", help="checkpoint dir, HF dir or recipe")
    ap.add_argument("--task", default="caption", choices=["caption", "answer"])
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()

    images = _images(32)
    rows = []
    for mode, flags in MODES.items():
        proc, url = start_server(args.model, flags, args.threads)
        try:
            asyncio.run(load(url, args.task, images, 8, 4))  # warm-up
            for c in args.concurrency:
                row = {"mode": mode, **asyncio.run(load(url, args.task, images, args.requests, c))}
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{args.model}, POST /{args.task}, {args.requests} requests per row, server torch threads {args.threads}\n")
    print("| mode | clients | requests/s | p50 ms | p95 ms | mean batch | all 200 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ok = "yes" if r["ok"] == r["requests"] else f"{r['ok']}/{r['requests']}"
        print(f"| {r['mode']} | {r['concurrency']} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['mean_batch']:.1f} | {ok} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
