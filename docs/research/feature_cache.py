"""The feature cache (`model.feature_cache_gb`) on a large frozen tower: `clip-small` (the packaged
EfficientNet-Lite0 at 224 px, frozen, and MiniLM, trained) on 256 training records of a shapes
world, 40 steps x 32 (five epochs), cache on and off alternating, twice (docs/results.md, "Speed").

    PYTHONPATH=src python docs/research/feature_cache.py DEMO/data
"""
import json
import statistics
import sys
import tempfile

import numpy as np
from PIL import Image

from polymodal.train import train


def main(data: str) -> None:
    recs = [json.loads(line) for line in open(f"{data}/captions_train.jsonl")][:256]
    for r in recs:
        r["image"] = np.asarray(Image.open(f"{data}/{r['image']}").convert("RGB"))
    epoch = len(recs) // 32
    with tempfile.TemporaryDirectory() as tmp:
        for i, gb in enumerate((2.0, 0.0, 2.0, 0.0)):
            cfg = {"task": "retrieval", "model": {"recipe": "clip-small", "freeze": ["vision"], "feature_cache_gb": gb},
                   "data": {"text_field": "captions"},
                   "optim": {"lr": 1e-4, "max_steps": 40, "batch_size": 32, "warmup_steps": 2},
                   "checkpointing": {"every": 0, "keep_last": 1}, "precision": "no",
                   "logging": {"every": 1, "progress": False, "plot": False, "tensorboard": False},
                   "output_dir": f"{tmp}/run{i}"}
            rows = [r["samples_per_s"] for r in train(cfg, train_records=recs).history if "samples_per_s" in r]
            print(f"feature_cache_gb={gb}: samples/s first epoch {statistics.median(rows[:epoch]):.1f}, "
                  f"later epochs {statistics.median(rows[epoch:]):.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
