"""Saving and restoring a run: the trainer's state and one object for plain and sharded runs.

A plain run (one process, or DDP) holds the whole model and optimizer in every process: a step
checkpoint is a polymodal checkpoint plus `optimizer.pt`, `scheduler.pt`, `rng-<rank>.pt` and
`trainer_state.json`. A sharded run (FSDP, DeepSpeed) holds slices: the weights are gathered
into a plain model to write the polymodal checkpoint (a collective: every process takes part),
and the optimizer goes into Accelerate's own sharded state files (`accelerate/`). `Checkpointer`
hides the difference from the training loop.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from polymodal.train import run_dir
from polymodal.train.freezing import merged_for_saving

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run is; saved with every step checkpoint (`trainer_state.json`) and restored on resume.

    Args:
        step: optimizer steps done. epoch, micro_in_epoch: position in the data order.
        samples: training samples seen (all processes). world_size: processes that trained.
        best_value, best_step: the best validation value so far and its step.
        bad_validations: validations since the last improvement (early stopping).
    """

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    samples: int = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_validations: int = 0
    world_size: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def improves(self, value: float, mode: str) -> bool:
        """Whether `value` beats the best so far ("min": smaller is better, "max": larger)."""
        if self.best_value is None:
            return True
        return value < self.best_value if mode == "min" else value > self.best_value


class Checkpointer:
    """Writes a run's step and best checkpoints and restores them, plain or sharded alike.

    Args:
        run: the run directory. setup: the ModelSetup (base model, LoRA or not, recipe).
        processor: saved with every checkpoint. accelerator: the run's Accelerator.
        task: the run's task name, written into each checkpoint's config.json.
        keep_last: step checkpoints to keep.
    """

    def __init__(self, run: run_dir.RunDir, setup, processor, accelerator, task: str, keep_last: int):
        self.run, self.setup, self.processor, self.accelerator = run, setup, processor, accelerator
        self.task, self.keep_last = task, keep_last
        self.sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")

    # ------------------------------------------------------------------------------- restore
    def prepare(self, model: nn.Module, optimizer, scheduler, resume_from: Path | None):
        """`accelerator.prepare` the model and optimizer, restoring a checkpoint when resuming.

        Returns:
            (model, optimizer, TrainState, this process's RNG state to restore or None).
        """
        acc, world = self.accelerator, self.accelerator.num_processes
        state, rng = TrainState(world_size=world), None
        if resume_from is not None and not self.sharded:
            self._load_weights(model, resume_from)
        model, optimizer = acc.prepare(model, optimizer)
        if resume_from is None:
            return model, optimizer, state, None
        if self.sharded:
            acc.load_state(str(resume_from / "accelerate"))  # weights + sharded optimizer state
        else:
            optimizer.load_state_dict(run_dir.load_torch(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(run_dir.load_torch(resume_from / "scheduler.pt"))
        if acc.scaler is not None and (resume_from / "scaler.pt").is_file():
            acc.scaler.load_state_dict(run_dir.load_torch(resume_from / "scaler.pt"))
        state = TrainState(**run_dir.read_state(resume_from))
        rng_file = resume_from / f"rng-{acc.process_index}.pt"
        if state.world_size == world and rng_file.is_file():
            rng = run_dir.load_torch(rng_file)
        else:
            log.warning("resuming on %d processes a run saved on %d: the data order is kept, dropout "
                        "and masking draws differ", world, state.world_size)
        state.world_size = world
        log.info("resuming %s at step %d", resume_from, state.step)
        return model, optimizer, state, rng

    def _load_weights(self, model: nn.Module, ckpt: Path) -> None:
        """Weights of a step checkpoint into the model being trained (adapter-wrapped for LoRA)."""
        from safetensors.torch import load_file

        from polymodal.checkpoint import WEIGHTS_NAME, load_state_checked

        if self.setup.lora:
            model.load_state_dict(run_dir.load_torch(ckpt / "lora_state.pt"))
        else:
            load_state_checked(model, load_file(str(ckpt / WEIGHTS_NAME)), str(ckpt / WEIGHTS_NAME))

    # ---------------------------------------------------------------------------------- save
    def save(self, step: int, model: nn.Module, optimizer, scheduler, state: TrainState) -> Path:
        """Write `step-NNNNNN/` (every process takes part); returns its path."""
        from polymodal.checkpoint import save_checkpoint

        acc = self.accelerator
        gathered = self._gather(model)  # (a collective when sharded)
        extra = {"scheduler.pt": scheduler.state_dict()}
        if not self.sharded:
            extra["optimizer.pt"] = optimizer.state_dict()
        if acc.scaler is not None:
            extra["scaler.pt"] = acc.scaler.state_dict()
        if self.setup.lora:  # resume needs the adapter-wrapped weights, not the merged ones
            extra["lora_state.pt"] = {k: v.detach().cpu() for k, v in acc.unwrap_model(model).state_dict().items()}
        meta = {"task": self.task, "recipe": self.setup.recipe, "training": {"step": step, "run": str(self.run.path)}}
        write_all = (lambda d: acc.save_state(str(d / "accelerate"))) if self.sharded else None
        return self.run.save(step, acc, lambda d: save_checkpoint(d, self._plain(model, gathered), self.processor, **meta),
                             extra, state.to_dict(), self.keep_last, write_all=write_all)

    def save_best(self, model: nn.Module, training: dict) -> None:
        """Write `best/` (every process takes part; the main one writes)."""
        from polymodal.checkpoint import save_checkpoint

        gathered = self._gather(model)  # (a collective when sharded)
        if self.accelerator.is_main_process:
            save_checkpoint(self.run.path / "best", self._plain(model, gathered), self.processor, task=self.task,
                            recipe=self.setup.recipe, training=training)

    def _gather(self, model: nn.Module) -> nn.Module | None:
        """Sharded runs: the full model gathered from every process onto the main one (else None).
        Every process must call this: gathering is a collective."""
        if not self.sharded:
            return None
        state = self.accelerator.get_state_dict(model)
        if not self.accelerator.is_main_process:
            return None
        from polymodal.models import build_model

        plain = build_model(self.setup.base.export_spec())
        plain.load_state_dict(state)
        return plain

    def _plain(self, model: nn.Module, gathered: nn.Module | None) -> nn.Module:
        """The plain polymodal model to write (main process): gathered, or the model with LoRA merged."""
        return gathered if gathered is not None else merged_for_saving(self.setup, self.accelerator.unwrap_model(model))
