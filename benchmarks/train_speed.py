"""Training throughput: polymodal's trainer against a plain Hugging Face `Trainer` loop on the
identical model, data, batch size, optimizer and schedule, run side by side.

    PYTHONPATH=src python benchmarks/train_speed.py                       # tiny recipes
    PYTHONPATH=src python benchmarks/train_speed.py --recipes clip-small captioner-small --steps 30

Each measurement runs in a fresh subprocess (Accelerate keeps per-process state), the variants
of one recipe alternate (repeats x [hf, polymodal fp32, polymodal bf16]) so machine noise hits
them alike, and the steady-state samples/s excludes the first `--skip` steps (start-up, first
allocations). The HF loop computes the same loss (polymodal's objective inside `forward`), so
the only differences are the loops themselves and their defaults.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def task_of(recipe: str) -> str:
    """The task a recipe is trained for (its YAML's `task`)."""
    from polymodal.models.recipes import get_recipe

    return get_recipe(recipe)["task"]


def make_data(recipe: str, n: int, seed: int = 0):
    """`n` preprocessed samples (dicts of tensors) at the recipe's image size; fixed-length text."""
    import torch

    from polymodal.models.recipes import get_recipe

    size = get_recipe(recipe)["processor"]["image"]["image_size"]
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        ids = torch.cat([torch.tensor([101]), torch.randint(1000, 5000, (10,), generator=g), torch.tensor([102])])
        data.append({"pixel_values": torch.randn(3, size, size, generator=g), "input_ids": ids,
                     "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids.clone(),
                     "decoder_attention_mask": torch.ones_like(ids), "labels": torch.tensor(i % 2),
                     "image_ids": torch.tensor(i)})
    return data


def run_polymodal(recipe: str, precision: str, steps: int, batch_size: int, skip: int) -> float:
    from torch.utils.data import default_collate

    from polymodal.train import train

    cfg = {"task": task_of(recipe), "model": {"recipe": recipe},
           "optim": {"lr": 1e-4, "max_steps": steps, "batch_size": batch_size, "warmup_steps": 5},
           "checkpointing": {"every": 0, "keep_last": 1},
           "logging": {"every": 1, "progress": False, "plot": False, "tensorboard": False},
           "precision": precision, "output_dir": f"/tmp/polymodal-bench/{recipe}-{precision}-{time.time_ns()}"}
    res = train(cfg, train_records=make_data(recipe, steps * batch_size), collate_fn=default_collate)
    rows = [r for r in res.history if "samples_per_s" in r][skip:]
    # samples/s over the measured steps = total samples / total time
    return len(rows) * batch_size / sum(batch_size / r["samples_per_s"] for r in rows)


def run_hf(recipe: str, precision: str, steps: int, batch_size: int, skip: int) -> float:
    """A plain `transformers.Trainer` loop: the model wrapped so `forward` returns the loss."""
    import torch
    from torch.utils.data import default_collate
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import polymodal
    from polymodal.processing import Processor
    from polymodal.models.recipes import get_recipe
    from polymodal.registry import OBJECTIVES
    from polymodal.tasks import get_task

    torch.manual_seed(0)
    model = polymodal.create_model(recipe)
    proc = Processor.from_spec(get_recipe(recipe)["processor"])
    specs = get_task(task_of(recipe)).default_objectives(model)
    objs = [OBJECTIVES.build(s, "bench", **({"processor": proc} if s["type"] == "mlm" else {})) for s in specs]

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **batch):
            loss = sum(obj(self.inner, dict(batch))[0] for obj in objs)
            return {"loss": loss}

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    args = TrainingArguments(output_dir=f"/tmp/polymodal-bench/hf-{time.time_ns()}", max_steps=steps,
                             per_device_train_batch_size=batch_size, learning_rate=1e-4, warmup_steps=5,
                             lr_scheduler_type="cosine", weight_decay=0.05, max_grad_norm=1.0,
                             bf16=precision == "bf16", use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", dataloader_num_workers=0, remove_unused_columns=False,
                             disable_tqdm=True)
    Trainer(model=WithLoss(model), args=args, train_dataset=make_data(recipe, steps * batch_size),
            data_collator=default_collate, callbacks=[Clock()]).train()
    measured = times[skip - 1:]
    return (len(measured) - 1) * batch_size / (measured[-1] - measured[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=["clip-tiny", "captioner-tiny", "vqa-tiny"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--one", nargs=2, metavar=("IMPL", "PRECISION"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:  # a single measurement, in this subprocess
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        fn = run_hf if a.one[0] == "hf" else run_polymodal
        print("RESULT", fn(a.recipes[0], a.one[1], a.steps, a.batch_size, a.skip), flush=True)
        return
    variants = [("hf", "no"), ("polymodal", "no"), ("polymodal", "bf16"), ("polymodal", "auto")]
    table = []
    for recipe in a.recipes:
        got: dict = {v: [] for v in variants}
        for _ in range(a.repeats):
            for impl, prec in variants:
                cmd = [sys.executable, __file__, "--one", impl, prec, "--recipes", recipe, "--steps", str(a.steps),
                       "--skip", str(a.skip), "--batch-size", str(a.batch_size), "--threads", str(a.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(f"{recipe} {impl} {prec}: failed\n{out.stderr[-1500:]}", file=sys.stderr)
                    break
                got[(impl, prec)].append(float(line[0].split()[1]))
        row = {"recipe": recipe, "batch_size": a.batch_size}
        for (impl, prec), vals in got.items():
            row[f"{impl}_{prec}"] = round(statistics.median(vals), 1) if vals else None
        if row.get("hf_no") and row.get("polymodal_auto"):
            row["speedup_vs_hf"] = round(row["polymodal_auto"] / row["hf_no"], 2)
        table.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
