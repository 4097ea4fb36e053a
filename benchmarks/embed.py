"""Embedding and retrieval throughput: images/s and texts/s of `polymodal.load(...).embed_images`
/ `embed_texts` at batch 1 and batched, and the time of one text query against an image index
of growing size (`polymodal.infer.index.ImageIndex.search`: exact inner product, or FAISS when
installed).

The model is the `clip-tiny` recipe (a conv-stem + BERT dual encoder; untrained weights run at the
same speed); images are the shapes world's 64-px PNGs.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Size, shapes_world, timed


def run(size: Size, work: Path) -> dict:
    import polymodal
    from polymodal.infer.index import ImageIndex

    data, _ = shapes_world(work, size.images)
    paths = sorted(str(p) for p in (data / "images").rglob("*.png"))[:max(8, size.images // 4)]
    texts = [f"a small red circle left of {i} blue squares" for i in range(len(paths))]
    model = polymodal.load("clip-tiny")
    out = {"model": "clip-tiny", "images": len(paths), "embed": {}, "query": {}}
    for b in (1, 32):
        model.batch_size = b
        sec, emb = timed(lambda: model.embed_images(paths), repeats=size.repeats)
        tsec, _ = timed(lambda: model.embed_texts(texts), repeats=size.repeats)
        out["embed"][f"batch {b}"] = {"images_per_s": len(paths) / sec, "texts_per_s": len(texts) / tsec}
    dim = emb.shape[1]
    query = model.embed_texts(["a small red circle"])[0]
    rng = np.random.default_rng(0)
    for n in size.index_sizes:
        e = rng.standard_normal((n, dim)).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        import torch

        index = ImageIndex(work, [f"img{i}.png" for i in range(n)], torch.from_numpy(e), {})
        index.search(query, top_k=5)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            hits = index.search(query, top_k=5)
            times.append(time.perf_counter() - t)
        assert len(hits) == 5
        out["query"][n] = {"ms": 1e3 * statistics.median(times)}
    return out
