"""The fusion comparison: the same fusion-encoder VQA model, trained with each fusion module on the
same data, budget and seeds, then evaluated on the test and compositional splits.

    polymodal compare-fusions --data data/shapes --steps 600 --seeds 0 --out docs/fusion

writes `fusion_comparison.json` (every number) and `fusion_comparison.md` (the table) to --out.
It trains and evaluates, so it sits on the top floor beside demo.py (eval does not import train).
Columns: VQA accuracy overall and per question type (test split), compositional-split accuracy,
parameters (whole model and fusion module), training samples/s and inference latency (ms per
question, batch 1, median of repeated runs).
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

FUSIONS = ("concat", "attention", "cross_transformer", "projection", "gated", "bilinear")


def _config(data: str, fusion: str, steps: int, seed: int, dim: int, batch_size: int, out: Path,
            tokenizer: str | None) -> dict:
    proc = {"image": {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "max_length": 48}
    if tokenizer:
        proc["tokenizer"] = tokenizer
    return {
        "task": "vqa", "seed": seed, "output_dir": str(out), "precision": "auto",
        "model": {"spec": {"type": "fusion_encoder",
                           "vision": {"type": "conv_stem", "dim": dim, "depth": 3, "width": 32},
                           "text": {"type": "bert", "hidden_size": dim, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "max_position_embeddings": 64},
                           "fusion": {"type": fusion, "dim": dim}},
                  "processor": proc},
        "data": {"train": data, "val": data, "max_val_samples": 256},
        "optim": {"lr": 1e-3, "max_steps": steps, "batch_size": batch_size, "warmup_steps": max(1, steps // 20),
                  "weight_decay": 0.01},
        "checkpointing": {"every": 0, "keep_last": 1, "best_metric": "val/vqa_classification/acc", "mode": "max"},
        "logging": {"every": 20, "progress": False, "plot": True, "tensorboard": False},
    }


def _latency_ms(model, images: list, questions: list[str], repeats: int = 20) -> float:
    """Median milliseconds of one batch-1 question (pre-processing included), after a warm-up."""
    model.answer(images[:1], questions[:1])
    times = []
    for i in range(repeats):
        k = i % len(images)
        t = time.perf_counter()
        model.answer(images[k:k + 1], questions[k:k + 1])
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def compare_fusions(data: str, out: str | Path, steps: int = 600, seeds: Sequence[int] = (0,),
                    fusions: Sequence[str] = FUSIONS, dim: int = 128, batch_size: int = 64,
                    tokenizer: str | None = None, eval_limit: int | None = None) -> list[dict]:
    """Train and evaluate one VQA model per (fusion, seed); returns one row per fusion (means over seeds).

    Args:
        data: a shapes-world directory (or any VQA dataset spec with test/comp splits).
        out: where the runs, the JSON and the markdown table go.
        steps, batch_size, dim: the shared training budget and model width.
        seeds: one run per seed; the table reports the mean (and the spread when several).
        tokenizer: a tokenizer folder (default: the recipe's MiniLM WordPieces).
    """
    import polymodal
    from polymodal.data import open_dataset
    from polymodal.eval.run import evaluate
    from polymodal.tasks import get_task
    from polymodal.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test_q = list(open_dataset(data, "test", shapes_file=get_task("vqa").shapes_file))[:20]
    rows = []
    for fusion in fusions:
        per_seed = []
        for seed in seeds:
            run_dir = out / "runs" / f"{fusion}-seed{seed}"
            t0 = time.perf_counter()
            res = train(_config(data, fusion, steps, seed, dim, batch_size, run_dir, tokenizer))
            train_s = time.perf_counter() - t0
            sps = [r["samples_per_s"] for r in res.history if "samples_per_s" in r]
            ckpt = res.best_checkpoint or res.last_checkpoint
            model = polymodal.load(ckpt)
            test = evaluate("vqa", data, model=model, split="test", limit=eval_limit)
            comp = evaluate("vqa", data, model=model, split="comp", limit=eval_limit)
            per_seed.append({
                "seed": seed, "test": test["metrics"], "comp": comp["metrics"],
                "params": sum(p.numel() for p in model.model.parameters()),
                "fusion_params": sum(p.numel() for p in model.model.fusion.parameters()),
                "train_samples_per_s": statistics.median(sps) if sps else None, "train_seconds": train_s,
                "latency_ms": _latency_ms(model, [q["image"] for q in test_q], [q["question"] for q in test_q]),
                "checkpoint": str(ckpt)})
            log.info("%s seed %d: test acc %.3f, comp acc %.3f", fusion, seed, test["metrics"]["accuracy"],
                     comp["metrics"]["accuracy"])
        rows.append(_summarise(fusion, per_seed))
    (out / "fusion_comparison.json").write_text(json.dumps(rows, indent=2))
    (out / "fusion_comparison.md").write_text(markdown_table(rows, steps, batch_size, seeds))
    return rows


def _summarise(fusion: str, runs: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    qtypes = sorted(k for k in runs[0]["test"] if k.startswith("accuracy[question_type="))
    row = {"fusion": fusion, "runs": runs,
           "test_accuracy": mean([r["test"]["accuracy"] for r in runs]),
           "test_accuracy_spread": (max(r["test"]["accuracy"] for r in runs) - min(r["test"]["accuracy"] for r in runs)),
           "comp_accuracy": mean([r["comp"]["accuracy"] for r in runs]),
           "per_type": {k[len("accuracy[question_type="):-1]: mean([r["test"].get(k) for r in runs]) for k in qtypes},
           "params": runs[0]["params"], "fusion_params": runs[0]["fusion_params"],
           "train_samples_per_s": mean([r["train_samples_per_s"] for r in runs]),
           "latency_ms": mean([r["latency_ms"] for r in runs])}
    return row


def markdown_table(rows: list[dict], steps: int, batch_size: int, seeds: Sequence[int]) -> str:
    types = list(rows[0]["per_type"]) if rows else []
    head = (["fusion", "test acc", "comp acc"] + types
            + ["params (fusion)", "train samples/s", "latency ms"])
    lines = [f"VQA on shapes world, {steps} steps x batch {batch_size}, seeds {', '.join(map(str, seeds))} "
             "(mean over seeds; accuracy per question type on the test split).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -(r["test_accuracy"] or 0)):
        acc = f"{r['test_accuracy']:.3f}" + (f" ± {r['test_accuracy_spread'] / 2:.3f}" if len(seeds) > 1 else "")
        cells = [f"`{r['fusion']}`", acc, f"{r['comp_accuracy']:.3f}"]
        cells += [f"{r['per_type'][t]:.3f}" for t in types]
        cells += [f"{r['params'] / 1e6:.2f}M ({r['fusion_params'] / 1e6:.2f}M)",
                  f"{r['train_samples_per_s']:.0f}" if r["train_samples_per_s"] else "–", f"{r['latency_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
