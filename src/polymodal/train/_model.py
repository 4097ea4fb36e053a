"""Setting up the model of a run: recipe / spec / `init_from`, freezing, LoRA, the tokenizer
check, AdamW parameter groups, the learning-rate schedule and the precision choice."""
from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from polymodal.errors import CheckpointError, ConfigError
from polymodal.train.config import LoraConfig, ModelConfig, merge_spec

log = logging.getLogger(__name__)


@dataclass
class ModelSetup:
    model: nn.Module          # what trains (a peft wrapper around `base` with LoRA)
    base: nn.Module           # the polymodal model family
    processor: object         # polymodal.processing.Processor
    task: str | None          # the recipe's / checkpoint's task
    recipe: str | None
    lora: bool


def build_for_training(cfg: ModelConfig, source: str) -> ModelSetup:
    """Build the model and processor a run starts from.

    The architecture is the recipe's (or `spec`), else the `init_from` checkpoint's, with
    `overrides` merged in; `init_from` then supplies every weight whose name and shape fit.
    """
    from polymodal.checkpoint import read_config
    from polymodal.models import build_model
    from polymodal.models.recipes import get_recipe
    from polymodal.processing import Processor

    if sum(x is not None for x in (cfg.recipe, cfg.spec)) > 1:
        raise ConfigError(f"{source}: model.recipe and model.spec are alternatives; give one")
    ckpt = read_config(cfg.init_from) if cfg.init_from else None
    task, proc_spec, proc_dir = None, {}, None
    if cfg.recipe is not None:
        try:
            recipe = get_recipe(cfg.recipe)
        except ConfigError as exc:
            raise ConfigError(f"{source}: model.recipe: {exc}") from exc
        spec, proc_spec, task = recipe["model"], recipe.get("processor") or {}, recipe.get("task")
    elif cfg.spec is not None:
        spec = cfg.spec
    elif ckpt is not None:
        spec, task = ckpt["model"], ckpt.get("task")
    else:
        raise ConfigError(f"{source}: model needs one of recipe, spec or init_from")
    if ckpt is not None and ckpt.get("processor"):
        # Starting from a checkpoint: keep the tokenizer and image statistics its weights know.
        proc_spec, proc_dir = ckpt["processor"], Path(cfg.init_from)
    spec = merge_spec(spec, cfg.overrides)
    proc_spec = merge_spec(proc_spec, cfg.processor)
    processor = Processor.from_spec(proc_spec, f"{source}: model.processor", proc_dir)
    if cfg.recipe is not None or cfg.spec is not None:  # a new architecture, not the checkpoint's own
        spec = fit_to_tokenizer(spec, processor.tokenizer, cfg.overrides)
    base = build_model(spec, source=source)
    if cfg.init_from:
        _load_matching(base, Path(cfg.init_from))
    _freeze(base, cfg.freeze, source)
    model = _add_lora(base, cfg.lora, cfg.freeze, source) if cfg.lora is not None else base
    return ModelSetup(model, base, processor, task, cfg.recipe, cfg.lora is not None)


def recipe_task(cfg: ModelConfig, source: str) -> str | None:
    """The task a model config implies: its recipe's, else its init_from checkpoint's."""
    from polymodal.checkpoint import read_config
    from polymodal.models.recipes import get_recipe

    if cfg.recipe is not None:
        try:
            return get_recipe(cfg.recipe).get("task")
        except ConfigError as exc:
            raise ConfigError(f"{source}: model.recipe: {exc}") from exc
    if cfg.init_from:
        return read_config(cfg.init_from).get("task")
    return None


def family(cfg: ModelConfig) -> str | None:
    """The model family type the config builds (dual_encoder, fusion_encoder, encoder_decoder)."""
    from polymodal.models.recipes import get_recipe

    spec = cfg.spec or (get_recipe(cfg.recipe)["model"] if cfg.recipe else None)
    return merge_spec(spec, cfg.overrides).get("type") if spec else None


def fit_to_tokenizer(spec: dict, tokenizer, overrides: dict) -> dict:
    """Size from-scratch text towers, decoders and MLM heads to the processor's tokenizer.

    A recipe is written for one tokenizer (MiniLM's 30,522 WordPieces); a run that brings its
    own (e.g. one fitted to its data with `train_tokenizer`) gets embedding tables and special
    ids that match it. Keys the config's overrides set explicitly are left alone.
    """
    spec = copy.deepcopy(spec)
    n = len(tokenizer)
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    said = {k: set(v) if isinstance(v, dict) else set() for k, v in overrides.items()}
    text = spec.get("text")
    if isinstance(text, dict) and text.get("type") == "bert" and "vocab_size" not in said.get("text", ()):
        text["vocab_size"] = n
    dec = spec.get("decoder")
    if isinstance(dec, dict) and dec.get("type") == "gpt2" and not dec.get("pretrained") and not dec.get("config"):
        for key, value in (("vocab_size", n), ("bos_token_id", bos), ("eos_token_id", eos),
                           ("pad_token_id", tokenizer.pad_token_id)):
            if key not in said.get("decoder", ()) and value is not None:
                dec[key] = value
    if spec.get("mlm_vocab_size") and "mlm_vocab_size" not in overrides:
        spec["mlm_vocab_size"] = n
    return spec


def _load_matching(model: nn.Module, directory: Path) -> None:
    """Copy every tensor of the checkpoint whose name and shape the model has; log the rest."""
    from safetensors.torch import load_file

    from polymodal.checkpoint import WEIGHTS_NAME

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}; model.init_from needs a polymodal checkpoint")
    state = load_file(str(path))
    own = model.state_dict()
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in fit)
    new = sorted(k for k in own if k not in state)
    model.load_state_dict(fit, strict=False)
    log.info("init_from %s: %d tensors loaded, %d skipped (%s), %d new (%s)", directory, len(fit),
             len(skipped), ", ".join(skipped[:4]), len(new), ", ".join(new[:4]))
    if not fit:
        raise CheckpointError(f"{directory}: no tensor of this checkpoint fits the model; is it the right one?")


def _freeze(model: nn.Module, names: list, source: str) -> None:
    for name in names:
        try:
            part = model.get_submodule(name)
            params = list(part.parameters())
        except AttributeError:
            try:
                params = [model.get_parameter(name)]
            except AttributeError:
                children = [n for n, _ in model.named_children()]
                raise ConfigError(f"{source}: model.freeze: the model has no part {name!r}; "
                                  f"its parts: {', '.join(children)}") from None
        for p in params:
            p.requires_grad_(False)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The largest parts whose parameters are all frozen (by `freeze`, LoRA, or unused). They
    run in eval mode: no dropout, and BatchNorm statistics stay what they were."""
    out: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            walk(child)

    walk(model)
    return out


def _add_lora(model: nn.Module, cfg: LoraConfig, frozen: list, source: str) -> nn.Module:
    """Wrap `model` with peft LoRA adapters; only adapters and `train_also` parts train."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    try:
        with warnings.catch_warnings():
            # peft picks fan_in_fan_out per layer (GPT-2's Conv1D vs Linear) and says so each time
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to")
            wrapped = get_peft_model(model, PeftLora(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                     target_modules=list(cfg.target_modules)))
    except ValueError as exc:
        raise ConfigError(f"{source}: model.lora.target_modules {cfg.target_modules}: {exc}") from exc
    for name in cfg.train_also:
        if name in frozen or not hasattr(model, name) or getattr(model, name) is None:
            continue
        part = getattr(model, name)
        for p in (part.parameters() if isinstance(part, nn.Module) else [part]):
            p.requires_grad_(True)
    return wrapped


def merged_for_saving(setup: ModelSetup, model: nn.Module) -> nn.Module:
    """The plain polymodal model to write: LoRA adapters merged into a copy, else the model itself."""
    if not setup.lora:
        return model
    return copy.deepcopy(model).merge_and_unload()


def check_tokenizer(model: nn.Module, processor, source: str) -> None:
    """Refuse a tokenizer whose ids the model cannot embed, or whose [CLS]/[SEP]/[PAD] differ from
    the decoder's BOS/EOS/PAD (the batches put [CLS] first and [SEP] last)."""
    tok = processor.tokenizer
    n = len(tok)
    for name, mod in model.named_modules():
        get = getattr(mod, "get_input_embeddings", None)
        if get is None or not hasattr(mod, "config"):
            continue
        emb = get()
        if isinstance(emb, nn.Embedding) and emb.num_embeddings < n:
            raise ConfigError(f"{source}: tokenizer/model mismatch: the tokenizer ({processor.tokenizer_source}) "
                              f"has {n} tokens but {name or 'the model'} embeds only {emb.num_embeddings}; "
                              "use the tokenizer the model was built for, or set the model's vocab_size")
    decoder = getattr(model, "decoder", None)
    cfg = getattr(getattr(decoder, "model", None), "config", None)
    if cfg is not None:
        want = {"bos_token_id": tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
                "eos_token_id": tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
                "pad_token_id": tok.pad_token_id}
        bad = [f"{k}={getattr(cfg, k)} (tokenizer: {v})" for k, v in want.items()
               if v is not None and getattr(cfg, k, None) is not None and getattr(cfg, k) != v]
        if bad:
            raise ConfigError(f"{source}: tokenizer/model mismatch: the decoder's {', '.join(bad)}; build the "
                              "decoder with the tokenizer's special ids")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay; biases, norm weights, scalars (1-d or 0-d) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) where torch has it: on CPU a tiny model's
    optimizer step is otherwise a large share of the step time (2.4x faster step measured on
    vqa-tiny, 1 thread)."""
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def resolve_precision(precision: str) -> str:
    """Accelerate's mixed_precision for a config value, or "measure" for "auto" on CPU.

    "auto": on a GPU bf16 where supported, else fp16 with loss scaling. On CPU whether bf16
    autocast pays depends on the model and the CPU (AMX or not, matrix sizes): measured on this
    development CPU (AVX512-BF16, no AMX), bf16 made the tiny recipes 15-35% slower and
    clip-small (224 px EfficientNet + MiniLM) 25% faster. So "auto" measures (`measure_bf16`).
    """
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ConfigError("precision fp16 needs a GPU (loss scaling); on CPU use bf16 or no")
    if precision != "auto":
        return precision
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no" if has_accelerator() else "measure"


def measure_bf16(step, repeats: int = 2, gain: float = 0.9) -> str:
    """Time `step()` (forward + backward of one training batch) in fp32 and under CPU bf16
    autocast, alternating; "bf16" if that is at least 1/gain times faster, else "no".

    Draws no random numbers from the run's streams. Every process of a multi-process run
    measures; the summed times decide for all alike.
    """
    import time

    import torch.distributed as dist

    best = {"no": float("inf"), "bf16": float("inf")}
    with torch.random.fork_rng(devices=[]):
        for i in range(repeats + 1):
            for mode in ("no", "bf16"):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                    step()
                if i:  # the first round warms up (allocations, oneDNN kernels)
                    best[mode] = min(best[mode], time.perf_counter() - t0)
    times = torch.tensor([best["no"], best["bf16"]], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(times)
    log.info("one step: bf16 autocast %.1f ms, fp32 %.1f ms", 1e3 * times[1], 1e3 * times[0])
    return "bf16" if times[1] < gain * times[0] else "no"


def has_accelerator() -> bool:
    """A GPU (CUDA / ROCm), Apple MPS or Intel XPU device is usable."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or bool(mps and mps.is_available())
            or bool(xpu and xpu.is_available()))


def cpu_has_amx() -> bool:
    """Whether this process may use the AMX tile unit (asks the kernel for permission once)."""
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except RuntimeError:
        return False
