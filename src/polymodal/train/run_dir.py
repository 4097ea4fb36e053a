"""The run directory: resolved config, atomic step checkpoints, RNG states, logs and curves.

    run/
      config.yaml          the fully resolved run config
      metrics.jsonl        one row per logged step and per validation (metrics.csv: the same, a table)
      curves.png           training and validation curves
      step-000100/         a polymodal checkpoint (config.json, model.safetensors, tokenizer) plus
                           optimizer.pt, scheduler.pt, rng-<rank>.pt, trainer_state.json
      best/                the checkpoint with the best validation value (+ best.json)

A step directory is written under a hidden temporary name and renamed when complete, so a run
killed at any moment leaves only complete `step-*` directories; `--resume` takes the newest.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from polymodal.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")
#: config keys that may change between a run and its resumption
RESUMABLE_CHANGES = ("output_dir", "logging", "data.num_workers", "checkpointing.keep_last",
                     "checkpointing.every", "validation.batch_size")


class RunDir:
    """One run's output directory (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ------------------------------------------------------------------ finding checkpoints
    def checkpoints(self) -> list[Path]:
        """Complete step directories, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir()
                 if (m := _STEP.match(p.name)) and (p / STATE_NAME).is_file()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    # ------------------------------------------------------------------------ starting a run
    def check_free(self, resume: bool) -> None:
        """Refuse (early) to start a new run where one has checkpoints, unless resuming it."""
        latest = self.latest()
        if not resume and latest is not None:
            raise ConfigError(f"{self.path}: holds a run already (latest checkpoint {latest.name}); pass "
                              "--resume to continue it, or choose another --output-dir")

    def prepare(self, resolved: dict, resume: bool, is_main: bool) -> Path | None:
        """Check the directory fits this run; write config.yaml. Returns the checkpoint to resume.

        Raises ConfigError when the directory holds another run (or this one without --resume).
        """
        cfg_file = self.path / "config.yaml"
        latest = self.latest()
        old = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else None
        self.check_free(resume)
        if resume and old is not None and latest is not None:
            diff = config_diff(old, resolved)
            if diff:
                raise ConfigError(f"{self.path}: holds a different run; its config.yaml differs in "
                                  f"{', '.join(diff[:8])}; resume with the same config or choose another --output-dir")
        if resume and latest is None:
            log.warning("%s: no complete checkpoint to resume from; starting from scratch", self.path)
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in self.path.glob(".step-*.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
            cfg_file.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        return latest if resume else None

    # ----------------------------------------------------------------------------- writing
    def save(self, step: int, accelerator, write_model, extra: dict, state: dict, keep_last: int,
             write_all=None) -> Path:
        """Write `step-NNNNNN/` atomically. Called on every process.

        Args:
            write_model: main-process callable(directory) writing the polymodal checkpoint.
            extra: {file name: object} written with torch.save by the main process
                (optimizer, scheduler, ... : tensors and plain values only).
            state: the trainer state (step, epoch, data position, best value), as JSON.
            write_all: callable(directory) every process runs (Accelerate's sharded states).
        """
        final = self.path / f"step-{step:06d}"
        tmp = self.path / f".step-{step:06d}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            write_model(tmp)                          # polymodal checkpoint: config, weights, tokenizer
            for name, obj in extra.items():
                torch.save(obj, tmp / name)
        accelerator.wait_for_everyone()
        if write_all is not None:
            write_all(tmp)
        torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))  # last: marks the directory complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[:-keep_last] if keep_last > 0 else []:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / STATE_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt}: unreadable {STATE_NAME} ({exc})") from exc


def load_torch(path: Path):
    """Optimizer / scheduler / RNG files: plain tensors and values, never arbitrary pickles."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); resume from an earlier checkpoint") from exc


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, ignoring RESUMABLE_CHANGES."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, path + ".")
        elif a != b:
            out.append(path)
    return out


# ------------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    """Every RNG a step may draw from (dropout, masking, negatives, augmentation)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -------------------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.jsonl (appended per row), metrics.csv and curves.png (rewritten), TensorBoard."""

    def __init__(self, path: Path, resume_step: int | None, tensorboard: bool, enabled: bool):
        self.enabled = enabled
        self.jsonl, self.csv, self.png = path / "metrics.jsonl", path / "metrics.csv", path / "curves.png"
        self.rows: list[dict] = []
        if not enabled:
            return
        if resume_step is not None and self.jsonl.is_file():
            # Keep what happened up to the checkpoint; rows of the killed run after it are replayed.
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r.get("step", 0) <= resume_step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path / "tensorboard"))
            except ImportError:
                log.debug("tensorboard is not installed; skipping TensorBoard logs")

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, row["step"])

    def flush(self, plot: bool) -> None:
        """Rewrite metrics.csv (union of columns) and curves.png."""
        if not self.enabled or not self.rows:
            return
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        if plot:
            plot_curves(self.rows, self.png)
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.enabled and self.tb is not None:
            self.tb.close()


def plot_curves(rows: list[dict], path: Path) -> None:
    """Training losses (left) and validation values (right) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if any(k.startswith("val/") for k in r)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k for k in dict.fromkeys(k for r in train for k in r) if k == "loss" or k.endswith("/loss")]:
        pts = [(r["step"], r[key]) for r in train if key in r]
        axes[0].plot(*zip(*pts), label=key)
    axes[0].set(xlabel="step", ylabel="loss", title="training")
    for key in dict.fromkeys(k for r in val for k in r if k.startswith("val/")):
        pts = [(r["step"], r[key]) for r in val if key in r]
        axes[1].plot(*zip(*pts), marker="o", label=key)
    axes[1].set(xlabel="step", title="validation")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
