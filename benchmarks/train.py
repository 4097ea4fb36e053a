"""Training throughput: polymodal's trainer against a plain Hugging Face `Trainer` loop on the
identical model, data, batch size, objectives, optimizer (fused AdamW in both) and schedule.

The recipes are the demo's VQA model, captioner and retrieval dual encoder (`polymodal.demo`'s run
configs, trained from scratch here; the dual encoder's frozen tower is cached after its first
epoch) and two of `configs/shapes/` (retrieval with a dual encoder that pools per object,
captioning with `captioner-tiny`), all on a shapes world generated for the run.

Contenders, alternating in one process (`common.alternate`):

  plain              `transformers.Trainer` with the model wrapped so `forward` returns the
                     objectives' loss; the task's collator made the usual way (one image row per
                     record); its defaults (fp32, data loaded in the main process)
  polymodal          `polymodal.train.train(config)` with the recipe's config as written
  polymodal + LEVER  the same with one documented option changed (the lever rows)

Samples/s are steady-state: the first `skip` steps are left out; data loading is inside the
timed steps of both loops. Samples are records (questions for VQA, captions for captioning).
A ratio is the median over rounds of contender / plain in the same round (`paired_ratio`).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

from benchmarks.common import Size, alternate, paired_ratio, shapes_world

#: lever rows per recipe: (label, config overrides as {dotted key: value})
LEVERS = {
    "demo-vqa": [("data.num_workers=1", {"data.num_workers": 1}),
                 ("data.group_by_image=false", {"data.group_by_image": False}),
                 ("precision=bf16", {"precision": "bf16"})],
    "demo-captioner": [("data.captions_per_image=5", {"data.captions_per_image": 5}),
                       ("data.num_workers=1", {"data.num_workers": 1}),
                       ("precision=bf16", {"precision": "bf16"})],
    "demo-retrieval": [("model.feature_cache_gb=0", {"model.feature_cache_gb": 0})],
    "shapes-retrieval": [],
    "shapes-caption": [],
}


def recipes(work: Path, size: Size) -> dict[str, dict]:
    """The run configs measured: the demo's VQA model, captioner and retrieval model; two of
    configs/shapes/."""
    import yaml

    from polymodal.demo import BUDGETS, _configs

    data, tok = shapes_world(work, size.images)
    demo = _configs(work / "demo", BUDGETS["full"])
    out = {}
    vqa = copy.deepcopy(demo["vqa"])
    vqa["model"].pop("init_from")  # random weights: the speed is the same, no pretraining stage needed
    vqa["model"]["processor"]["tokenizer"] = str(tok)
    vqa["data"]["train"] = str(data)
    out["demo-vqa"] = vqa
    cap = copy.deepcopy(demo["lm"])  # the captioner's architecture (caption_en fine-tunes it on English)
    cap["model"]["processor"]["tokenizer"] = str(tok)
    cap["data"].update(train=str(data), text_field="captions")
    out["demo-captioner"] = cap
    ret = copy.deepcopy(demo["retrieval"])  # frozen vision tower and object heads: its features are cached
    ret["model"].pop("init_from")
    ret["model"]["processor"]["tokenizer"] = str(tok)
    ret["data"]["train"] = str(data)
    out["demo-retrieval"] = ret
    root = Path(__file__).resolve().parent.parent / "configs" / "shapes"
    for name, file in (("shapes-retrieval", "retrieval.yaml"), ("shapes-caption", "caption.yaml")):
        cfg = yaml.safe_load((root / file).read_text())
        cfg["model"]["processor"]["tokenizer"] = str(tok)
        cfg["data"]["train"] = cfg["data"]["train"].replace("data/shapes", str(data))
        out[name] = cfg
    for cfg in out.values():
        cfg["data"].pop("val", None)
        cfg["data"].pop("max_val_samples", None)
        cfg["optim"].update(batch_size=size.batch, max_steps=size.train_steps + size.skip, epochs=1,
                            warmup_steps=2)
        cfg["checkpointing"] = {"every": 0, "keep_last": 1}
        cfg["logging"] = {"every": 1, "progress": False, "plot": False, "tensorboard": False}
    return out


def _set(cfg: dict, key: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    *path, last = key.split(".")
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return cfg


def run_polymodal(cfg: dict, work: Path, size: Size) -> float:
    """Steady-state samples/s of `polymodal.train.train(cfg)`. With `data.captions_per_image` K
    a step trains on `batch_size` images x K captions, and a sample is a caption."""
    from polymodal.train import train

    k = cfg["data"].get("captions_per_image", 1)
    if k > 1:  # as many captions a step as the others: batch_size / K images
        cfg = _set(cfg, "optim.batch_size", -(-size.batch // k))
    res = train(cfg, output_dir=str(work / "runs" / f"pm-{time.time_ns()}"))
    rows = [r for r in res.history if "samples_per_s" in r][size.skip:]
    per_step = cfg["optim"]["batch_size"] * k
    return len(rows) * per_step / sum(cfg["optim"]["batch_size"] / r["samples_per_s"] for r in rows)


def run_plain(cfg: dict, work: Path, size: Size) -> float:
    """Steady-state samples/s of a plain `transformers.Trainer` on the same model and data."""
    import torch
    from accelerate.state import AcceleratorState
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from polymodal.train.trainer import losses, prepare_run

    cfg = _set(cfg, "precision", "no")
    r = prepare_run(cfg, output_dir=str(work / "runs" / f"plain-{time.time_ns()}"))
    collate = copy.copy(r.collate)  # the usual collator: every record brings its own image row
    if hasattr(collate, "captions_per_image"):
        collate.captions_per_image = 1
    else:
        collate.share_images = False
    objectives = r.objectives

    class WithLoss(torch.nn.Module):
        """The model, with `forward` returning the objectives' loss (what `Trainer` expects)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **batch):
            loss, _ = losses(objectives, self.inner, batch)
            return {"loss": loss}

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    opt = r.cfg.optim
    args = TrainingArguments(output_dir=str(work / "runs" / f"hf-{time.time_ns()}"), max_steps=r.total_steps,
                             per_device_train_batch_size=opt.batch_size, learning_rate=opt.lr,
                             warmup_steps=opt.warmup_steps, lr_scheduler_type=opt.schedule,
                             weight_decay=opt.weight_decay, max_grad_norm=opt.clip_grad_norm or 0.0,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=r.cfg.seed)
    AcceleratorState._reset_state(True)  # the Trainer starts its own Accelerator
    Trainer(model=WithLoss(r.model), args=args, train_dataset=r.train_set, data_collator=collate,
            callbacks=[Clock()]).train()
    AcceleratorState._reset_state(True)
    measured = stamps[size.skip - 1:]
    return (len(measured) - 1) * size.batch / (measured[-1] - measured[0])


def run(size: Size, work: Path) -> dict:
    """{recipe: {contender: {median, values}}} in samples/s, and the ratios to the plain loop."""
    import logging

    logging.getLogger("polymodal").setLevel(logging.WARNING)
    out = {}
    for name, cfg in recipes(work, size).items():
        contenders = {"plain": lambda cfg=cfg: run_plain(cfg, work, size),
                      "polymodal": lambda cfg=cfg: run_polymodal(cfg, work, size)}
        for label, changes in LEVERS[name]:
            varied = cfg
            for k, v in changes.items():
                varied = _set(varied, k, v)
            contenders[f"polymodal, {label}"] = lambda cfg=varied: run_polymodal(cfg, work, size)
        got = alternate(contenders, size.repeats)
        for v in got.values():
            v["ratio"] = round(paired_ratio(v["values"], got["plain"]["values"]), 3)
        out[name] = {"batch": size.batch, "steps": size.train_steps, "results": got}
    return out
