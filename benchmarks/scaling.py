"""How the cost of a training step grows with image size, sequence length, batch size and the
number of images per batch: forward + backward (+ AdamW) of the demo's captioner (LM loss) and
VQA model (answer loss), on synthetic batches of exactly the stated shape.

  image size       captioner, batch 16, 16 caption tokens, images of S x S pixels
  sequence length  captioner, batch 16, 64-px images, T caption tokens
  batch size       captioner, 64-px images, 16 tokens, B captions (ms per sample)
  images           VQA model, 32 questions over I distinct images (`image_index`: each image
                   encoded once), what `data.group_by_image` buys
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import Size


def _step_ms(model, objectives, batch: dict, opt, repeats: int) -> float:
    from polymodal.train.trainer import losses

    def step():
        loss, _ = losses(objectives, model, dict(batch))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run(size: Size, work: Path) -> dict:
    from benchmarks.train import recipes
    from polymodal.train.optim import adamw, param_groups
    from polymodal.train.trainer import build_objectives, prepare_run

    tiny = size.name == "tiny"
    reps = max(3, size.repeats)
    cfgs = recipes(work, size)
    g = torch.Generator().manual_seed(0)
    out = {}

    r = prepare_run(dict(cfgs["demo-captioner"], precision="no"), output_dir=str(work / "runs" / f"sc-{time.time_ns()}"))
    model = r.setup.base.train()
    objectives = build_objectives([{"type": "lm"}], r.processor, model, "scaling")
    opt = adamw(param_groups(model, 0.01), lr=1e-4)
    vocab = len(r.processor.tokenizer)

    def cap_batch(b: int, s: int, t: int) -> dict:
        ids = torch.randint(5, vocab, (b, t), generator=g)
        return {"pixel_values": torch.randn(b, 3, s, s, generator=g), "decoder_input_ids": ids,
                "decoder_attention_mask": torch.ones_like(ids)}

    out["image size"] = {s: _step_ms(model, objectives, cap_batch(16, s, 16), opt, reps)
                         for s in ((32, 64) if tiny else (32, 64, 96, 128))}
    out["sequence length"] = {t: _step_ms(model, objectives, cap_batch(16, 64, t), opt, reps)
                              for t in ((8, 16) if tiny else (8, 16, 32, 48))}
    out["batch size"] = {b: _step_ms(model, objectives, cap_batch(b, 64, 16), opt, reps) / b
                         for b in ((4, 8) if tiny else (8, 16, 32, 64))}

    r = prepare_run(dict(cfgs["demo-vqa"], precision="no"), output_dir=str(work / "runs" / f"sc-{time.time_ns()}"))
    model = r.setup.base.train()
    objectives = build_objectives([{"type": "vqa_classification"}], r.processor, model, "scaling")
    opt = adamw(param_groups(model, 0.01), lr=1e-4)
    q = 8 if tiny else 32
    ids = torch.randint(5, len(r.processor.tokenizer), (q, 12), generator=g)
    out["images"] = {}
    for n in ((8, 2) if tiny else (32, 16, 8, 4)):
        batch = {"pixel_values": torch.randn(n, 3, 64, 64, generator=g), "input_ids": ids,
                 "attention_mask": torch.ones_like(ids), "image_index": torch.arange(q) % n,
                 "labels": torch.randint(0, len(model.labels), (q,), generator=g)}
        out["images"][n] = _step_ms(model, objectives, batch, opt, reps)
    out["questions"] = q
    return out
