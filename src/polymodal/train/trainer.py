"""The training loop: one function over Hugging Face Accelerate.

One process on CPU, or DDP / FSDP / DeepSpeed on GPUs through `accelerate launch`, with no
code change. The loop knows nothing about a particular task: the objectives own the losses,
the collator owns the batch layout.

    from polymodal.train import train
    result = train("configs/shapes/caption.yaml", overrides=["optim.max_steps=200"])
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from polymodal.errors import ConfigError
from polymodal.registry import OBJECTIVES
from polymodal.tasks import Task, get_task
from polymodal.train import _data, run_dir
from polymodal.train.freezing import frozen_modules, merged_for_saving
from polymodal.train.optim import adamw, lr_factor, param_groups
from polymodal.train.precision import has_accelerator, measure_bf16, resolve_precision
from polymodal.train.setup import build_for_training, check_tokenizer, config_family, recipe_task
from polymodal.train.config import RunConfig, load_run_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced. `history` holds the logged rows (training and validation)."""

    output_dir: Path
    step: int
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_value: float | None
    stopped_early: bool
    history: list = field(default_factory=list)


def train(config: str | Path | dict | RunConfig, overrides: Sequence[str] = (), *, output_dir: str | None = None,
          resume: bool = False, train_records: Sequence[dict] | None = None,
          val_records: Sequence[dict] | None = None, collate_fn: Callable | None = None) -> TrainResult:
    """Train a model as `config` says; the Python face of `polymodal train`.

    Args:
        config: a run-config YAML path, a mapping with its layout, or a RunConfig.
        overrides: `["optim.lr=1e-3", ...]`, as `--set` on the command line.
        output_dir: the run directory (overrides `output_dir` of the config).
        resume: continue from the newest complete checkpoint of the run directory.
        train_records, val_records: records given directly instead of `data.train` / `data.val`.
        collate_fn: records -> batch (docs/training.md); default: the data module's collator for the task.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    cfg = load_run_config(config, overrides)
    source = getattr(cfg, "_source", "config")
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    opt = cfg.optim
    if train_records is None and not cfg.data.train:
        raise ConfigError(f"{source}: data.train is missing; give a dataset spec")
    run = run_dir.RunDir(cfg.output_dir)
    run.check_free(resume)
    precision = resolve_precision(cfg.precision)  # "measure": bf16 or fp32, decided below
    # The processes (one, or those torchrun / accelerate launch started) and their process group.
    # cpu=True on machines without an accelerator: that is what makes a multi-process launch a
    # gloo group on CPU rather than N lone runs.
    procs = PartialState(cpu=not has_accelerator())
    world, rank = procs.num_processes, procs.process_index

    # ---- everything that can be wrong is found before the first step -------------------------
    set_seed(cfg.seed)  # identical initialisation on every process
    name = cfg.task or recipe_task(cfg.model, source)
    task = _task(name, source) if name else None
    train_set = train_records if train_records is not None else _data.open_records(
        cfg.data.train, cfg.data.train_split, f"{source}: data.train", cfg.seed, train=True,
        shapes_file=task and task.shapes_file)
    if train_records is None and task is not None and "labels" not in cfg.model.overrides:
        # A classifier's rows are the training data's answers / labels, unless the config names them.
        labels = task.labels(_data.plain_records(train_set), config_family(cfg.model))
        if labels is not None:
            cfg.model.overrides["labels"] = labels
    setup = build_for_training(cfg.model, source)
    model, processor = setup.model, setup.processor
    cfg.task = cfg.task or setup.task
    task = _task(cfg.task, source)
    if not task.trains(setup.base):
        raise ConfigError(f"{source}: task {cfg.task!r} does not train a {setup.family} model (the family "
                          f"serves {', '.join(getattr(setup.base, 'tasks', ())) or 'no task'})")
    check_tokenizer(setup.base, processor, source)
    cfg.objectives = cfg.objectives or task.default_objectives(setup.base)
    objectives = build_objectives(cfg.objectives, processor, setup.base, source)
    requires = {k for _, _, obj in objectives for k in obj.requires}

    val_set = val_records if val_records is not None else (_data.open_records(
        cfg.data.val, cfg.data.val_split, f"{source}: data.val", cfg.seed, train=False,
        shapes_file=task.shapes_file) if cfg.data.val else None)
    collate = collate_fn or task.collator(processor, setup.base, cfg.data.text_field)
    _data.check_batch(collate, train_set, requires, f"{source}: data.train")
    if val_set is not None:
        _data.check_batch(collate, val_set, requires, f"{source}: data.val")
    elif cfg.checkpointing.early_stopping_patience:
        raise ConfigError(f"{source}: checkpointing.early_stopping_patience needs validation data (data.val)")

    micro_per_epoch = _data.micro_batches_per_epoch(len(train_set), opt.batch_size, world, opt.grad_accum)
    if micro_per_epoch == 0:
        raise ConfigError(f"{source}: {len(train_set)} training records are fewer than one optimizer step "
                          f"({opt.batch_size} x {world} processes x {opt.grad_accum} accumulation); "
                          "lower optim.batch_size or grad_accum")
    steps_per_epoch = micro_per_epoch // opt.grad_accum
    total_steps = opt.max_steps or opt.epochs * steps_per_epoch

    # One dry step on two records: objectives x model x batch fit together, and the log keys
    # (for best_metric) are known. Parameters no objective reaches are frozen, so DDP needs no
    # unused-parameter search and 1 and N processes train the same parameters.
    log_keys = _dry_run(model, objectives, collate, train_set, cfg.seed)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    if unused:
        log.info("not trained by these objectives (frozen): %s", ", ".join(unused[:8]) + (" …" if len(unused) > 8 else ""))
    if precision == "measure":
        precision = _precision_from_run(cfg.output_dir) if resume else None
        precision = precision or _measure_precision(model, objectives, collate(
            [train_set[i] for i in range(min(opt.batch_size, len(train_set)))]))
        log.info("precision auto: %s", "bf16" if precision == "bf16" else "fp32")
    cfg.precision = precision  # the resolved value goes into config.yaml
    accelerator = _accelerator(precision, opt.grad_accum)
    # FSDP / DeepSpeed shard weights and optimizer state over the processes: checkpoints gather
    # the weights and leave the optimizer to Accelerate's own (sharded) state files.
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    if sharded and setup.lora:
        raise ConfigError(f"{source}: LoRA under {accelerator.distributed_type.name} is not supported yet; use DDP")
    best_key, mode = cfg.checkpointing.best_metric, cfg.checkpointing.mode
    if val_set is not None and best_key not in {f"val/{k}" for k in log_keys}:
        raise ConfigError(f"{source}: checkpointing.best_metric {best_key!r} is not a validation value; "
                          f"one of: {', '.join(sorted(f'val/{k}' for k in log_keys))}")

    resume_from = run.prepare(cfg.to_dict(), resume, accelerator.is_main_process)
    accelerator.wait_for_everyone()

    # ---- optimizer, schedule, Accelerate -------------------------------------------------------
    optimizer = adamw(param_groups(model, opt.weight_decay), lr=opt.lr, betas=tuple(opt.betas),
                             eps=opt.eps)
    # The scheduler is stepped by hand once per optimizer step (Accelerate's wrapper would step
    # it once per process, which changes the schedule with the process count).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, warmup=opt.warmup_steps, total=total_steps, schedule=opt.schedule,
        min_ratio=opt.min_lr_ratio))
    state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "samples": 0, "best_value": None, "best_step": None,
             "bad_validations": 0, "world_size": world}
    rng_to_restore = None
    if resume_from is not None and not sharded:
        _load_weights(model, setup, resume_from)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None and sharded:
        accelerator.load_state(str(resume_from / "accelerate"))  # weights + sharded optimizer state
    if resume_from is not None:
        if not sharded:
            optimizer.load_state_dict(run_dir.load_torch(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(run_dir.load_torch(resume_from / "scheduler.pt"))
        if accelerator.scaler is not None and (resume_from / "scaler.pt").is_file():
            accelerator.scaler.load_state_dict(run_dir.load_torch(resume_from / "scaler.pt"))
        state.update(run_dir.read_state(resume_from))
        rng_file = resume_from / f"rng-{rank}.pt"
        if state["world_size"] == world and rng_file.is_file():
            rng_to_restore = run_dir.load_torch(rng_file)
        else:
            log.warning("resuming on %d processes a run saved on %d: the data order is kept, dropout "
                        "and masking draws differ", world, state["world_size"])
        state["world_size"] = world
        log.info("resuming %s at step %d", resume_from, state["step"])
    frozen = frozen_modules(setup.base)
    device = accelerator.device
    unwrapped = accelerator.unwrap_model(model)
    metrics = run_dir.MetricsLog(run.path, state["step"] if resume_from else None, cfg.logging.tensorboard,
                              accelerator.is_main_process)
    val_every = cfg.validation.every or cfg.checkpointing.every

    def save_checkpoint(step: int) -> Path:
        from polymodal.checkpoint import save_checkpoint as write

        meta = {"task": cfg.task, "recipe": setup.recipe, "training": {"step": step, "run": str(run.path)}}
        plain = _plain_model(setup, accelerator, model) if sharded else None  # (a collective)
        extra = {"scheduler.pt": scheduler.state_dict()}
        if not sharded:
            extra["optimizer.pt"] = optimizer.state_dict()
        if accelerator.scaler is not None:
            extra["scaler.pt"] = accelerator.scaler.state_dict()
        if setup.lora:  # resume needs the adapter-wrapped weights, not the merged ones
            extra["lora_state.pt"] = {k: v.detach().cpu() for k, v in unwrapped.state_dict().items()}
        path = run.save(step, accelerator,
                        lambda d: write(d, plain or merged_for_saving(setup, unwrapped), processor, **meta),
                        extra, dict(state), cfg.checkpointing.keep_last,
                        write_all=(lambda d: accelerator.save_state(str(d / "accelerate"))) if sharded else None)
        metrics.flush(cfg.logging.plot)
        return path

    def validate(step: int) -> bool:
        """Validation values into the log; update best/; True if training should stop early."""
        values = _evaluate(model if sharded else unwrapped, objectives, val_set, collate, accelerator, cfg, frozen,
                           equal_shards=sharded)
        metrics.add({"step": step, **values})
        if accelerator.is_main_process:
            log.info("step %d validation: %s", step, _fmt(values))
        value = values[best_key]
        better = state["best_value"] is None or (value < state["best_value"] if mode == "min" else value > state["best_value"])
        if better:
            state.update(best_value=value, best_step=step, bad_validations=0)
            plain = _plain_model(setup, accelerator, model) if sharded else None  # (a collective)
            if accelerator.is_main_process:
                from polymodal.checkpoint import save_checkpoint as write

                write(run.path / "best", plain or merged_for_saving(setup, unwrapped), processor, task=cfg.task,
                      recipe=setup.recipe, training={"step": step, "best_metric": best_key, "value": value})
        else:
            state["bad_validations"] += 1
        patience = cfg.checkpointing.early_stopping_patience
        return bool(patience) and state["bad_validations"] >= patience

    # ---- the loop ------------------------------------------------------------------------------
    if rng_to_restore is not None:
        run_dir.set_rng_state(rng_to_restore)  # last, so nothing above draws from the restored streams
    model.train()
    for m in frozen:
        m.eval()
    progress = _Progress(total_steps, state["step"], cfg.logging.progress and accelerator.is_main_process)
    global_batch = opt.batch_size * world * opt.grad_accum
    # Logged values summed over the micro-batches since the last log row; kept as tensors so a
    # GPU is not synchronised every step.
    sums: dict = defaultdict(float)
    n_micro, t_last, last_ckpt, stopped, grad_norm = 0, time.perf_counter(), resume_from, False, 0.0

    while state["step"] < total_steps and not stopped:
        sampler = _data.EpochBatches(len(train_set), opt.batch_size, world, rank, cfg.seed, state["epoch"],
                                     opt.grad_accum, start=state["micro_in_epoch"])
        if hasattr(train_set, "set_epoch"):  # per-epoch choices of the data module (which caption)
            train_set.set_epoch(state["epoch"])
        # A private generator: creating the loader must not draw from the global RNG (dropout).
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(cfg.seed + state["epoch"]))
        for batch in loader:
            batch = _to(batch, device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logs = _losses(objectives, model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and opt.clip_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt.clip_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in logs.items():
                sums[k] = sums[k] + v
            n_micro += 1
            state["micro_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            # ---- one optimizer step done -----------------------------------------------------
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the lr waits too
                scheduler.step()
            state["step"] += 1
            state["samples"] += global_batch
            step = state["step"]
            if step % cfg.logging.every == 0 or step == total_steps:
                values = _mean_over_processes({k: float(v) / n_micro for k, v in sums.items()}, accelerator)
                now = time.perf_counter()
                row = {"step": step, "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0], **values,
                       **({"grad_norm": float(grad_norm)} if opt.clip_grad_norm else {}),
                       "samples_per_s": global_batch * (n_micro / opt.grad_accum) / (now - t_last)}
                metrics.add(row)
                progress.update(step, row)
                sums.clear()
                n_micro, t_last = 0, now
            else:
                progress.update(step, None)
            at_end = step >= total_steps
            t_aside = time.perf_counter()
            if val_set is not None and (at_end or (val_every and step % val_every == 0)):
                stopped = validate(step)
            if at_end or stopped or (cfg.checkpointing.every and step % cfg.checkpointing.every == 0):
                last_ckpt = save_checkpoint(step)
            if at_end or stopped:
                break
            t_last += time.perf_counter() - t_aside  # samples/s counts training time only
        else:  # the epoch ran out
            state["epoch"] += 1
            state["micro_in_epoch"] = 0

    progress.close()
    metrics.flush(cfg.logging.plot)
    metrics.close()
    best = run.path / "best"
    return TrainResult(run.path, state["step"], last_ckpt, best if best.is_dir() else None, state["best_value"],
                       stopped, list(metrics.rows))


# ----------------------------------------------------------------------------------- helpers
def _precision_from_run(output_dir: str) -> str | None:
    """The precision a run being resumed trained in (a resumed run keeps it)."""
    import yaml

    path = Path(output_dir) / "config.yaml"
    return yaml.safe_load(path.read_text()).get("precision") if path.is_file() else None


def _accelerator(precision: str, grad_accum: int):
    """The run's Accelerator (on top of the PartialState the run started with)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState._shared_state
    if state and state.get("distributed_type") == DistributedType.NO and state.get("_mixed_precision") != precision:
        # A second run in one Python process (a notebook, the tests) with another precision:
        # Accelerate keeps its state per process; a single-process one may be started afresh.
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=grad_accum,
                       cpu=not has_accelerator())


def _task(name: str, source: str) -> Task:
    try:
        return get_task(name)
    except ConfigError:
        from polymodal.tasks import task_names

        raise ConfigError(f"{source}: task {name!r} unknown; one of: {', '.join(task_names())}") from None


def build_objectives(specs: list, processor, model, source: str) -> list[tuple[str, float, object]]:
    """[(log name, weight, objective)] from `[{type, weight, ...kwargs}]`; checks each against the model."""
    import inspect

    import polymodal.train.objectives  # noqa: F401  (registers the built-in objectives)

    out, seen = [], defaultdict(int)
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"type": spec}
        where = f"{source}: objectives[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping like {{type: itc, weight: 1.0}}, got {spec!r}")
        spec = dict(spec)
        weight = spec.pop("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
        ctor = OBJECTIVES.get(spec["type"]) if spec.get("type") in OBJECTIVES else None
        injected = {"processor": processor} if ctor and "processor" in inspect.signature(ctor).parameters else {}
        obj = OBJECTIVES.build(spec, where, **injected)
        obj.check(model)
        seen[spec["type"]] += 1
        name = spec["type"] if seen[spec["type"]] == 1 else f"{spec['type']}{seen[spec['type']]}"
        out.append((name, float(weight), obj))
    if not out:
        raise ConfigError(f"{source}: objectives is empty")
    return out


def _losses(objectives, model, batch: dict) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the objectives' losses, and their logs under "<objective>/<name>"."""
    total, logs = 0.0, {}
    for name, weight, obj in objectives:
        loss, values = obj(model, batch)
        total = total + weight * loss
        logs.update({f"{name}/{k}": v for k, v in values.items()})
    batch.pop("_forward", None)
    logs["loss"] = total.detach()
    return total, logs


def _measure_precision(model, objectives, batch: dict) -> str:
    """bf16 autocast or fp32, whichever runs a training step of this model faster here."""
    was = model.training
    model.eval()  # BatchNorm statistics stay untouched

    def step():
        loss, _ = _losses(objectives, model, dict(batch))
        loss.backward()

    choice = measure_bf16(step)
    model.zero_grad(set_to_none=True)
    model.train(was)
    return choice


def _dry_run(model, objectives, collate, records, seed: int) -> list[str]:
    """Forward + backward on two records (eval mode, forked RNG: no trace on the run); log keys."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        was = model.training
        model.eval()
        loss, logs = _losses(objectives, model, collate([records[i] for i in range(min(2, len(records)))]))
        loss.backward()
        model.train(was)
    return list(logs)


@torch.no_grad()
def _evaluate(model, objectives, records, collate, accelerator, cfg: RunConfig, frozen, equal_shards: bool) -> dict:
    """Validation values averaged over the records (every process takes a shard).

    With a fixed seed for masking / negatives, outside the training RNG streams. `model` is the
    unwrapped model under DDP (no collectives in its forward, so shards may differ in size); a
    sharded model (FSDP, DeepSpeed) needs every process in every forward: `equal_shards` pads
    the shards with records that count zero.
    """
    idx = _data.shard(len(records), accelerator.num_processes, accelerator.process_index, cfg.data.max_val_samples)
    weight = [1.0] * len(idx)
    if equal_shards:
        longest = -(-min(len(records), cfg.data.max_val_samples or len(records)) // accelerator.num_processes)
        weight += [0.0] * (longest - len(idx))
        idx += [0] * (longest - len(idx))
    bs = cfg.validation.batch_size or cfg.optim.batch_size
    sums: dict[str, float] = defaultdict(float)
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for i in range(0, len(idx), bs):
            batch = collate([records[j] for j in idx[i:i + bs]])
            if batch is None:  # every record of the slice was unreadable (and dropped)
                continue
            batch = _to(batch, accelerator.device)
            with accelerator.autocast():
                _, logs = _losses(objectives, model, batch)
            n = sum(weight[i:i + bs])
            for k, v in logs.items():
                sums[k] += float(v) * n
            sums[" count"] += n
    model.train()
    for m in frozen:
        m.eval()
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    count = max(1.0, float(totals[keys.index(" count")]))
    return {f"val/{k}": float(totals[i]) / count for i, k in enumerate(keys) if k != " count"}


def _mean_over_processes(values: dict, accelerator) -> dict:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(t[i]) for i, k in enumerate(keys)}


def _plain_model(setup, accelerator, model):
    """The full model gathered from FSDP / DeepSpeed shards, on the main process (else None).
    Every process must call this: gathering is a collective."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    from polymodal.models import build_model

    plain = build_model(setup.base.export_spec())
    plain.load_state_dict(state)
    return plain


def _load_weights(model, setup, ckpt: Path) -> None:
    """Weights of a step checkpoint into the model being trained (adapter-wrapped for LoRA)."""
    from safetensors.torch import load_file

    from polymodal.checkpoint import WEIGHTS_NAME, load_state_checked

    if setup.lora:
        model.load_state_dict(run_dir.load_torch(ckpt / "lora_state.pt"))
    else:
        load_state_checked(model, load_file(str(ckpt / WEIGHTS_NAME)), str(ckpt / WEIGHTS_NAME))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fmt(values: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))


class _Progress:
    """A rich progress bar: step / total, loss, samples/s, ETA (main process, when enabled)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, completed=start, info="")
        self.bar.start()

    def update(self, step: int, row: dict | None) -> None:
        if self.bar is None:
            return
        info = {}
        if row is not None:
            info["info"] = f"loss {row['loss']:.4f}  {row['samples_per_s']:.1f} samples/s"
        self.bar.update(self.task, completed=step, **info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

