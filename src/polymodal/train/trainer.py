"""The training loop: one function over Hugging Face Accelerate.

One process on CPU, or DDP / FSDP / DeepSpeed on GPUs through `accelerate launch`, with no
code change. The loop knows nothing about a particular task: the task (polymodal.tasks) gives
the collator and the default objectives, the objectives own the losses. `train()` reads top to
bottom: set up (`prepare_run`), loop, evaluate, checkpoint (`Checkpointer`).

    from polymodal.train import train
    result = train("configs/shapes/caption.yaml", overrides=["optim.max_steps=200"])
"""
from __future__ import annotations

import contextlib
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
from polymodal.train.checkpointing import Checkpointer, TrainState
from polymodal.train.config import RunConfig, config_source, load_run_config
from polymodal.train.feature_cache import cached_frozen_tower
from polymodal.train.freezing import frozen_modules
from polymodal.train.optim import adamw, lr_factor, param_groups
from polymodal.train.precision import (NO_BF16_PATH, bf16_matmul_slowdown, has_accelerator, measure_bf16,
                                      resolve_precision)
from polymodal.train.setup import ModelSetup, build_for_training, check_tokenizer, config_family, recipe_task

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
    skipped: dict = field(default_factory=dict)  # {"train" | "val": {"count", "summary"}}: bad records skipped


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
        collate_fn: records -> batch (docs/training.md); default: the task's collator.
    """
    # ---- set up: everything that can be wrong is found before the first step ---------------------
    r = prepare_run(config, overrides, output_dir, resume, train_records, val_records, collate_fn)
    cfg, opt, acc = r.cfg, r.cfg.optim, r.accelerator
    optimizer = adamw(param_groups(r.model, opt.weight_decay), lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    # Stepped by hand once per optimizer step (Accelerate's wrapper would step it once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, warmup=opt.warmup_steps, total=r.total_steps, schedule=opt.schedule, min_ratio=opt.min_lr_ratio))
    ckpt = Checkpointer(r.run, r.setup, r.processor, acc, cfg.task, cfg.checkpointing.keep_last)
    model, optimizer, state, rng = ckpt.prepare(r.model, optimizer, scheduler, r.resume_from)
    frozen = frozen_modules(r.setup.base)
    logbook = _Log(r.run.path, state.step if r.resume_from else None, cfg, acc, r.total_steps, state.step)
    val_every = cfg.validation.every or cfg.checkpointing.every
    global_batch = opt.batch_size * acc.num_processes * opt.grad_accum
    last_ckpt, stopped, grad_norm = r.resume_from, False, 0.0
    if rng is not None:
        run_dir.set_rng_state(rng)  # last, so nothing above draws from the restored streams
    _train_mode(model, frozen)

    # ---- the loop ---------------------------------------------------------------------------------
    with cached_frozen_tower(r.setup.base, cfg.model.feature_cache_gb):   # a frozen image tower runs once an image
        while state.step < r.total_steps and not stopped:
            for batch in _epoch_loader(r, state, acc.device):
                with acc.accumulate(model):
                    with acc.autocast():
                        loss, logs = losses(r.objectives, model, batch)
                    acc.backward(loss)
                    if acc.sync_gradients and opt.clip_grad_norm:
                        grad_norm = acc.clip_grad_norm_(model.parameters(), opt.clip_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                logbook.add(logs)
                state.micro_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                if not acc.optimizer_step_was_skipped:  # fp16 overflow: the lr waits too
                    scheduler.step()
                state.step += 1
                state.samples += global_batch
                logbook.step(state, scheduler.get_last_lr()[0], grad_norm if opt.clip_grad_norm else None, global_batch)
                at_end = state.step >= r.total_steps
                with logbook.aside():  # samples/s counts training time only
                    # ---- evaluate ---------------------------------------------------------------------
                    if r.val_set is not None and (at_end or (val_every and state.step % val_every == 0)):
                        stopped = _validate(r, model if ckpt.sharded else acc.unwrap_model(model), ckpt, state,
                                            frozen, logbook)
                    # ---- checkpoint -------------------------------------------------------------------
                    if at_end or stopped or (cfg.checkpointing.every and state.step % cfg.checkpointing.every == 0):
                        last_ckpt = ckpt.save(state.step, model, optimizer, scheduler, state)
                        logbook.flush()
                if at_end or stopped:
                    break
            else:  # the epoch ran out
                state.epoch += 1
                state.micro_in_epoch = 0

    logbook.close()
    skipped = {split: report for split, data in (("train", r.train_set), ("val", r.val_set))
               if (report := _data.skip_report(data))}
    for split, report in skipped.items():
        log.warning("%s data: %s", split, report["summary"])
    best = r.run.path / "best"
    return TrainResult(r.run.path, state.step, last_ckpt, best if best.is_dir() else None, state.best_value,
                       stopped, list(logbook.metrics.rows), skipped)


# ------------------------------------------------------------------------------------- set up
@dataclass
class PreparedRun:
    """Everything `train()` needs, checked: config, model, objectives, data, Accelerate."""

    cfg: RunConfig
    source: str
    task: Task
    setup: ModelSetup
    model: torch.nn.Module
    processor: object
    objectives: list
    train_set: Sequence[dict]
    val_set: Sequence[dict] | None
    collate: Callable
    total_steps: int
    accelerator: object
    run: run_dir.RunDir
    resume_from: Path | None


def prepare_run(config, overrides: Sequence[str] = (), output_dir: str | None = None, resume: bool = False,
                train_records: Sequence[dict] | None = None, val_records: Sequence[dict] | None = None,
                collate_fn: Callable | None = None) -> PreparedRun:
    """Read the config, build model / objectives / data / collator, check they fit together (one
    dry step), choose the precision, start Accelerate and the run directory (see `train`)."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    cfg = load_run_config(config, overrides)
    source = config_source(config)
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
    world = procs.num_processes

    set_seed(cfg.seed)  # identical initialisation on every process
    name = cfg.task or recipe_task(cfg.model, source)
    task = _task(name, source) if name else None
    train_set = train_records if train_records is not None else _data.open_records(
        cfg.data.train, cfg.data.train_split, f"{source}: data.train", cfg.seed, train=True, task=task)
    if train_records is None and task is not None and "labels" not in cfg.model.overrides:
        # A classifier's rows are the training data's answers / labels, unless the config names them.
        labels = task.labels(_data.usable_records(train_set, task), config_family(cfg.model, source))
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

    if getattr(train_set, "task", False) is None:  # the task came from the model's recipe / checkpoint
        train_set.task = task
    val_set = val_records if val_records is not None else (_data.open_records(
        cfg.data.val, cfg.data.val_split, f"{source}: data.val", cfg.seed, train=False,
        task=task) if cfg.data.val else None)
    collate = collate_fn or task.collator(processor, setup.base, cfg.data.text_field)
    if cfg.data.captions_per_image > 1:
        if not hasattr(collate, "captions_per_image"):
            raise ConfigError(f"{source}: data.captions_per_image applies to captioning batches; the "
                              f"{cfg.task} collator ({type(collate).__name__}) has one text per record; "
                              "remove the key or set it to 1")
        collate.captions_per_image = cfg.data.captions_per_image
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
    total_steps = opt.max_steps or opt.epochs * (micro_per_epoch // opt.grad_accum)

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
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    if sharded and setup.lora:
        raise ConfigError(f"{source}: LoRA under {accelerator.distributed_type.name} is not supported yet; use DDP")
    best_key = cfg.checkpointing.best_metric
    if val_set is not None and best_key not in {f"val/{k}" for k in log_keys}:
        raise ConfigError(f"{source}: checkpointing.best_metric {best_key!r} is not a validation value; "
                          f"one of: {', '.join(sorted(f'val/{k}' for k in log_keys))}")

    resume_from = run.prepare(cfg.to_dict(), resume, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    return PreparedRun(cfg, source, task, setup, model, processor, objectives, train_set, val_set, collate,
                       total_steps, accelerator, run, resume_from)


def _task(name: str, source: str) -> Task:
    try:
        return get_task(name)
    except ConfigError:
        from polymodal.tasks import task_names

        raise ConfigError(f"{source}: task {name!r} unknown; one of: {', '.join(task_names())}") from None


# ----------------------------------------------------------------------------- loop, evaluate
def _epoch_loader(r: PreparedRun, state: TrainState, device):
    """This process's batches of the current epoch, from where the run stands, on `device`."""
    acc, opt = r.accelerator, r.cfg.optim
    groups = _data.image_keys(r.train_set) if r.cfg.data.group_by_image else None
    sampler = _data.EpochBatches(len(r.train_set), opt.batch_size, acc.num_processes, acc.process_index, r.cfg.seed,
                                 state.epoch, opt.grad_accum, start=state.micro_in_epoch, groups=groups)
    if hasattr(r.train_set, "set_epoch"):  # per-epoch choices of the data module (which caption)
        r.train_set.set_epoch(state.epoch)
    # A private generator: creating the loader must not draw from the global RNG (dropout).
    loader = torch.utils.data.DataLoader(r.train_set, batch_sampler=sampler, collate_fn=r.collate,
                                         num_workers=r.cfg.data.num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(r.cfg.seed + state.epoch))
    for batch in loader:
        yield _to(batch, device)


def _train_mode(model, frozen) -> None:
    """Training mode, except the frozen parts (no dropout; BatchNorm statistics stay)."""
    model.train()
    for m in frozen:
        m.eval()


def _validate(r: PreparedRun, model, ckpt: Checkpointer, state: TrainState, frozen, logbook: "_Log") -> bool:
    """Validation values into the log; a better one writes best/. True when training should stop early."""
    cfg = r.cfg
    values = evaluate_objectives(model, r.objectives, r.val_set, r.collate, r.accelerator,
                                 limit=cfg.data.max_val_samples, batch_size=cfg.validation.batch_size or cfg.optim.batch_size,
                                 seed=cfg.seed, equal_shards=ckpt.sharded)
    _train_mode(model, frozen)
    logbook.validation(state.step, values)
    best_key, value = cfg.checkpointing.best_metric, values[cfg.checkpointing.best_metric]
    if state.improves(value, cfg.checkpointing.mode):
        state.best_value, state.best_step, state.bad_validations = value, state.step, 0
        ckpt.save_best(model, {"step": state.step, "best_metric": best_key, "value": value})
    else:
        state.bad_validations += 1
    patience = cfg.checkpointing.early_stopping_patience
    return bool(patience) and state.bad_validations >= patience


def losses(objectives, model, batch: dict) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the objectives' losses, and their logs under "<objective>/<name>".

    The objectives of one step share one plain forward pass (`objectives.Batch`)."""
    from polymodal.train.objectives import Batch

    batch = Batch(batch)
    total, logs = 0.0, {}
    for name, weight, obj in objectives:
        loss, values = obj(model, batch)
        total = total + weight * loss
        logs.update({f"{name}/{k}": v for k, v in values.items()})
    logs["loss"] = total.detach()
    return total, logs


@torch.no_grad()
def evaluate_objectives(model, objectives, records, collate, accelerator, limit: int | None, batch_size: int,
                        seed: int, equal_shards: bool) -> dict:
    """Validation values: the objectives' logs averaged over the records (every process takes a shard).

    With a fixed seed for masking / negatives, outside the training RNG streams. `model` is the
    unwrapped model under DDP (no collectives in its forward, so shards may differ in size); a
    sharded model (FSDP, DeepSpeed) needs every process in every forward: `equal_shards` pads
    the shards with records that count zero. Leaves the model in eval mode.
    """
    idx = _data.shard(len(records), accelerator.num_processes, accelerator.process_index, limit)
    weight = [1.0] * len(idx)
    if equal_shards:
        longest = -(-min(len(records), limit or len(records)) // accelerator.num_processes)
        weight += [0.0] * (longest - len(idx))
        idx += [0] * (longest - len(idx))
    sums: dict[str, float] = defaultdict(float)
    count = 0.0
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(idx), batch_size):
            batch = collate([records[j] for j in idx[i:i + batch_size]])
            if batch is None:  # every record of the slice was unreadable (and dropped)
                continue
            batch = _to(batch, accelerator.device)
            with accelerator.autocast():
                _, logs = losses(objectives, model, batch)
            n = sum(weight[i:i + batch_size])
            for k, v in logs.items():
                sums[k] += float(v) * n
            count += n
    keys = sorted(sums)
    # one reduction: the sums, then the record count
    totals = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum") if accelerator.num_processes > 1 else totals
    n = max(1.0, float(totals[-1]))
    return {f"val/{k}": float(totals[i]) / n for i, k in enumerate(keys)}


class _Log:
    """The run's log: training values averaged over the micro-batches since the last row
    (kept as tensors, so a GPU is not synchronised every step), validation rows, samples/s,
    metrics.jsonl / csv / curves (main process) and the progress bar."""

    def __init__(self, path: Path, resume_step: int | None, cfg: RunConfig, accelerator, total: int, start: int):
        main = accelerator.is_main_process
        self.metrics = run_dir.MetricsLog(path, resume_step, cfg.logging.tensorboard, main)
        self.progress = _Progress(total, start, cfg.logging.progress and main)
        self.every, self.total, self.plot, self.accelerator = cfg.logging.every, total, cfg.logging.plot, accelerator
        self.accum = cfg.optim.grad_accum
        self.sums: dict = defaultdict(float)
        self.n_micro, self.t_last = 0, time.perf_counter()

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v
        self.n_micro += 1

    def step(self, state: TrainState, lr: float, grad_norm, global_batch: int) -> None:
        if not (state.step % self.every == 0 or state.step == self.total):
            self.progress.update(state.step, None)
            return
        values = _mean_over_processes({k: float(v) / self.n_micro for k, v in self.sums.items()}, self.accelerator)
        now = time.perf_counter()
        row = {"step": state.step, "epoch": state.epoch, "lr": lr, **values,
               **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
               "samples_per_s": global_batch * (self.n_micro / self.accum) / (now - self.t_last)}
        self.metrics.add(row)
        self.progress.update(state.step, row)
        self.sums.clear()
        self.n_micro, self.t_last = 0, now

    def validation(self, step: int, values: dict) -> None:
        self.metrics.add({"step": step, **values})
        if self.accelerator.is_main_process:
            log.info("step %d validation: %s", step, _fmt(values))

    @contextlib.contextmanager
    def aside(self):
        """Time spent in the block (validation, checkpoints) does not count for samples/s."""
        t0 = time.perf_counter()
        yield
        self.t_last += time.perf_counter() - t0

    def flush(self) -> None:
        self.metrics.flush(self.plot)

    def close(self) -> None:
        self.progress.close()
        self.metrics.flush(self.plot)
        self.metrics.close()


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


def _measure_precision(model, objectives, batch: dict) -> str:
    """bf16 autocast or fp32, whichever runs a training step of this model faster here."""
    slowdown = bf16_matmul_slowdown()
    if slowdown >= NO_BF16_PATH:
        log.info("a bf16 matmul runs %.0fx slower than fp32 on this CPU (no bf16 path): no step is timed", slowdown)
        return "no"
    was = model.training
    model.eval()  # BatchNorm statistics stay untouched

    def step():
        loss, _ = losses(objectives, model, dict(batch))
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
        loss, logs = losses(objectives, model, collate([records[i] for i in range(min(2, len(records)))]))
        loss.backward()
        model.train(was)
    return list(logs)


def _mean_over_processes(values: dict, accelerator) -> dict:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(t[i]) for i, k in enumerate(keys)}


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

