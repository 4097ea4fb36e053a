"""The run config: typed, strict dataclasses read from one YAML file plus `--set a.b=c` overrides.

    task: captioning
    model: {recipe: captioner-tiny, freeze: [vision]}
    data: {train: "shapes:data/shapes", val: "shapes:data/shapes"}
    optim: {lr: 3.0e-4, max_steps: 2000, batch_size: 32}

Every section is a dataclass whose field names are the YAML keys; an unknown key, a value of
the wrong type or outside its field's range (`bounded`: `batch_size: 0`, a negative `lr`) is a
`ConfigError` naming the file (or the `--set` it came from), the key path and what is allowed.
The YAML is read by polymodal.yamlfile: a key given twice is an error, and `yes` / `no` / `on`
/ `off` stay strings (`precision: no`), which fields that want a boolean accept. The fully
resolved config (defaults filled in, objectives and precision resolved) is written to the run
directory.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from polymodal.errors import ConfigError
from polymodal.registry import type_ok
from polymodal.yamlfile import load_yaml, read_yaml


@dataclass(frozen=True)
class Range:
    """The values a number field allows (each item, for a list of numbers): ge <= x <= le,
    gt < x < lt; `items`: a list of exactly that many numbers. None passes where the field
    allows None."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    items: int | None = None

    def holds(self, value) -> bool:
        if isinstance(value, (list, tuple)):
            return (self.items is None or len(value) == self.items) and all(map(self._number_holds, value))
        return self._number_holds(value)

    def _number_holds(self, x) -> bool:
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            return False
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {v if isinstance(v, int) else f'{v:g}'}"
                 for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        text = " and ".join(parts)
        return f"a list of {self.items} numbers, each {text}" if self.items else text


def bounded(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **limits) -> Any:
    """A config field whose value must lie in `Range(**limits)`, e.g. `batch_size: int = bounded(32, ge=1)`."""
    return field(default=default, default_factory=factory, metadata={"range": Range(**limits)})


@dataclass
class LoraConfig:
    """LoRA adapters (Hu et al., 2021) through `peft`; everything else is frozen.

    Args:
        r, alpha, dropout: adapter rank, scaling numerator, dropout on the adapter input.
        target_modules: module-name suffixes to adapt (BERT/ViT "query", "value"; GPT-2 "c_attn").
        train_also: top-level model parts kept fully trainable (new task heads, e.g. "classifier").
    """

    r: int = bounded(8, ge=1)
    alpha: int = bounded(16, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)
    target_modules: list = field(default_factory=lambda: ["query", "value", "c_attn"])
    train_also: list = field(default_factory=lambda: ["classifier", "itm_head", "mlm_head", "image_proj",
                                                      "image_pool", "text_proj", "logit_scale"])


@dataclass
class ModelConfig:
    """Which model to train.

    Args:
        recipe: a registered recipe name (`polymodal models`).
        spec: a full model-family spec instead of a recipe (`type: fusion_encoder ...`).
        overrides: merged into the recipe's model spec, recursively (a part with a new `type`
            replaces the old part whole), e.g. `{fusion: {type: concat, dim: 64}}`.
        processor: merged into the recipe's processor spec (image size, tokenizer, max_length).
        init_from: a polymodal checkpoint directory whose weights start the run; tensors the
            model does not have, or whose shape differs (a new answer vocabulary), are skipped.
        init_parts: {part: checkpoint directory}: these parts (top-level, e.g. vision,
            object_heads, or dotted paths) take their weights from another checkpoint, after
            init_from, e.g. a captioner's decoder from one run and its vision tower from another.
        freeze: top-level parts (vision, text, fusion, decoder, ...) or dotted paths kept fixed.
        lora: train LoRA adapters instead of the full weights.
        feature_cache_gb: when the image tower is frozen whole, its features for each image are
            computed once and kept in memory (keyed by the image's pixels) up to this many GiB,
            so later epochs and validation reuse them; 0 turns the cache off.
    """

    recipe: str | None = None
    spec: dict | None = None
    overrides: dict = field(default_factory=dict)
    processor: dict = field(default_factory=dict)
    init_from: str | None = None
    init_parts: dict = field(default_factory=dict)
    freeze: list = field(default_factory=list)
    lora: LoraConfig | None = None
    feature_cache_gb: float = bounded(2.0, ge=0)


@dataclass
class DataConfig:
    """Dataset specs, each handed to `polymodal.data.open_dataset(spec, split)`.

    Args:
        train, val: dataset specs (a path, `format:path`, or a mapping with `format`, `path` and the
            reader's options, e.g. `{format: jsonl, path: [a.jsonl, b.jsonl]}`); val may be None
            (no validation).
        train_split, val_split: the split names to open.
        num_workers: DataLoader worker processes (image decoding happens in the collator).
        max_val_samples: validate on at most this many validation records.
        text_field: the record field of the texts for captioning / pretraining / retrieval
            ("captions", or "captions_zh" for Chinese); None: the collator's default.
        group_by_image: batches hold all records of their images next to each other, and the
            image tower runs once per image, not once per record (VQA: ~6 questions an image).
            For collators that share images (VQA); ignored by the others.
        captions_per_image: captioning: each image of a batch brings this many of its captions
            (different ones, a seeded choice), and the image tower runs once for all of them
            (`image_index`), so a step of `batch_size` images trains on up to `batch_size x
            captions_per_image` captions. 1 (the default): one caption per image per epoch.
            Measured in docs/benchmarks.md (training, lever rows).
    """

    train: str | dict | None = None
    val: str | dict | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = bounded(0, ge=0)
    max_val_samples: int | None = bounded(None, ge=1)
    text_field: str | None = None
    group_by_image: bool = False
    captions_per_image: int = bounded(1, ge=1)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a cosine / linear / constant schedule.

    Args:
        lr, weight_decay, betas, eps: AdamW. Norm weights, biases and other 1-d parameters get
            no weight decay.
        warmup_steps: optimizer steps of linear warm-up from 0 to `lr`.
        schedule: shape of the learning rate after warm-up.
        min_lr_ratio: the schedule ends at `lr * min_lr_ratio`.
        epochs, max_steps: training length; `max_steps` (optimizer steps) wins when set.
        batch_size: samples per process per micro-batch. One optimizer step sees
            batch_size x processes x grad_accum samples (the global batch).
        grad_accum: micro-batches accumulated per optimizer step.
        clip_grad_norm: clip the global gradient norm to this (None: no clipping).
    """

    lr: float = bounded(3e-4, ge=0)
    weight_decay: float = bounded(0.05, ge=0)
    betas: list = bounded(factory=lambda: [0.9, 0.999], ge=0, lt=1, items=2)
    eps: float = bounded(1e-8, gt=0)
    warmup_steps: int = bounded(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = bounded(0.0, ge=0, le=1)
    epochs: int = bounded(1, ge=1)
    max_steps: int | None = bounded(None, ge=1)
    batch_size: int = bounded(32, ge=1)
    grad_accum: int = bounded(1, ge=1)
    clip_grad_norm: float | None = bounded(1.0, gt=0)


@dataclass
class CheckpointConfig:
    """When to write checkpoints and which to keep.

    Args:
        every: write `step-NNNNNN/` every this many optimizer steps (0: only at the end).
        keep_last: how many step checkpoints to keep (older ones are deleted; 0: keep all).
        best_metric: the validation value that picks `best/` (a key of the validation log,
            e.g. "val/loss", "val/classification/acc").
        mode: whether a smaller ("min") or larger ("max") `best_metric` is better.
        early_stopping_patience: stop after this many validations without improvement (None: never).
    """

    every: int = bounded(500, ge=0)
    keep_last: int = bounded(2, ge=0)
    best_metric: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    early_stopping_patience: int | None = bounded(None, ge=1)


@dataclass
class ValidationConfig:
    """Args:
        every: validate every this many optimizer steps (0: at each checkpoint); always at the end.
        batch_size: validation batch size per process (default: the training batch size).
    """

    every: int = bounded(0, ge=0)
    batch_size: int | None = bounded(None, ge=1)


@dataclass
class LoggingConfig:
    """Args:
        every: log training values every this many optimizer steps (metrics.jsonl, TensorBoard).
        progress: show a progress bar (loss, samples/s, ETA) on the main process.
        tensorboard: also write TensorBoard events when `tensorboard` is installed.
        plot: draw `curves.png` (training and validation curves) at each checkpoint.
    """

    every: int = bounded(10, ge=1)
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True


@dataclass
class RunConfig:
    """One training run.

    Args:
        task: a registered task (`polymodal.tasks`): pretrain | captioning | vqa | retrieval |
            classification | translation | ... (default: the recipe's task).
        objectives: losses with weights, e.g. `[{type: itc, weight: 1.0}, {type: itm}]`
            (registered in `polymodal.registry.OBJECTIVES`); default: the task's own
            (`Task.default_objectives`).
        precision: "bf16" (autocast), "fp16" (autocast + loss scaling, GPU only), "no" (fp32),
            or "auto" (bf16 where it is faster: GPUs with bf16, CPUs with AMX; fp32 otherwise).
        output_dir: the run directory (checkpoints, logs, resolved config).
        seed: seeds model initialisation, data order, dropout and masking (0 <= seed < 2**32).
    """

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    task: str | None = None
    objectives: list | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "runs/run"
    seed: int = bounded(0, ge=0, lt=2 ** 32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ parsing
def from_dict(cls, data: Any, where: str, source: str):
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types are errors.

    Args:
        cls: a config dataclass. data: the mapping (from YAML).
        where: the dotted key path of `data` ("optim"), for messages.
        source: the file (or `--set`) the values came from, for messages.
    """
    label = f"{source}: {where}" if where else source
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key {_join(where, key)!r}; "
                              f"allowed under {where or 'the top level'}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {_join(where, name)!r}")
            continue
        value, hint = data[name], hints[name]
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()) and type_ok(1.0, hint):
            value = float(value)  # PyYAML reads `lr: 3e-4` (no dot) as a string
        if isinstance(value, str) and value.lower() in _BOOL_WORDS and type_ok(True, hint) and not type_ok(value, hint):
            value = _BOOL_WORDS[value.lower()]  # `progress: no` (polymodal.yamlfile keeps it a string)
        sub = _dataclass_in(hint)
        limits = f.metadata.get("range")
        if sub is not None and value is not None:
            kwargs[name] = from_dict(sub, value, _join(where, name), source)
        elif not type_ok(value, hint):
            raise ConfigError(f"{source}: {_join(where, name)}: expected {_hint_name(hint)}, got {value!r}")
        elif limits is not None and value is not None and not limits.holds(value):
            raise ConfigError(f"{source}: {_join(where, name)}: must be {limits}, got {value!r}")
        else:
            kwargs[name] = copy.deepcopy(value)
    return cls(**kwargs)


_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}


def _dataclass_in(hint) -> type | None:
    """The dataclass in `hint` (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _hint_name(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"optim.lr=1e-3"` -> (["optim", "lr"], 0.001); the value is typed as a YAML scalar/flow value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
    key, raw = text.split("=", 1)
    path = [k for k in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: empty key segment in {key!r}")
    value = load_yaml(raw, f"--set {text!r}") if raw.strip() else None
    # YAML 1.1 reads "1e-3" as a string; a float is what anyone typing it means.
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)
    return path, value


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `a.b=c` into a copy of the raw config mapping (intermediate mappings are created)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, key in enumerate(path[:-1]):
            nxt = node.get(key)
            if nxt is None:
                nxt = node[key] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[:i + 1])} is {nxt!r}, not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def load_run_config(source: str | Path | dict | RunConfig, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a run config from a YAML file (or a mapping), apply `--set` overrides, check it strictly.

    Args:
        source: a YAML path, a mapping with the same layout, or a RunConfig (checked like the
            others; the result is a new RunConfig).
        overrides: `["optim.lr=1e-3", "model.freeze=[vision]"]`.
    """
    if isinstance(source, RunConfig):
        source = source.to_dict()
    if isinstance(source, dict):
        raw, name = source, "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        raw = read_yaml(path) or {}
        name = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: a run config is a mapping (task, model, data, optim, ...)")
    # Check the file on its own first, so an error names the file rather than a --set.
    from_dict(RunConfig, raw, "", name)
    if overrides:
        merged = apply_overrides(raw, list(overrides))
        try:
            from_dict(RunConfig, merged, "", name)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (after --set {' '.join(overrides)})") from exc
        raw = merged
    return from_dict(RunConfig, raw, "", name)


def config_source(source: str | Path | dict | RunConfig) -> str:
    """Where a run config came from, for error messages: its file, else "config"."""
    return str(Path(source)) if isinstance(source, (str, Path)) else "config"


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def merge_spec(base: dict, overrides: dict) -> dict:
    """Recursive merge for model specs: a nested mapping with a different `type` replaces the old one."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and value.get("type", old.get("type")) == old.get("type"):
            out[key] = merge_spec(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
