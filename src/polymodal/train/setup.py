"""Setting up the model of a run: recipe / spec / `init_from`, sized to the tokenizer, frozen
parts and LoRA (polymodal.train.freezing), and the tokenizer check."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from polymodal.errors import CheckpointError, ConfigError
from polymodal.train.config import ModelConfig, merge_spec
from polymodal.train.freezing import add_lora, freeze

log = logging.getLogger(__name__)


@dataclass
class ModelSetup:
    model: nn.Module          # what trains (a peft wrapper around `base` with LoRA)
    base: nn.Module           # the polymodal model family
    processor: object         # polymodal.processing.Processor
    task: str | None          # the recipe's / checkpoint's task
    recipe: str | None
    lora: bool

    @property
    def family(self) -> str:
        """The registered family name of the model (`fusion_encoder`, ...)."""
        from polymodal.tasks import family_of

        return family_of(self.base)


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
        recipe = _recipe(cfg, source)
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
    for part, directory in cfg.init_parts.items():
        if not isinstance(directory, (str, Path)):
            raise ConfigError(f"{source}: model.init_parts.{part}: expected a checkpoint directory, got {directory!r}")
        _load_matching(base, Path(directory), part=part, source=f"{source}: model.init_parts.{part}")
    freeze(base, cfg.freeze, source)
    model = add_lora(base, cfg.lora, cfg.freeze, source) if cfg.lora is not None else base
    return ModelSetup(model, base, processor, task, cfg.recipe, cfg.lora is not None)


def recipe_task(cfg: ModelConfig, source: str) -> str | None:
    """The task a model config implies: its recipe's, else its init_from checkpoint's."""
    from polymodal.checkpoint import read_config

    if cfg.recipe is not None:
        return _recipe(cfg, source).get("task")
    if cfg.init_from:
        return read_config(cfg.init_from).get("task")
    return None


def config_family(cfg: ModelConfig, source: str) -> str | None:
    """The model family type the config builds (dual_encoder, fusion_encoder, encoder_decoder)."""
    spec = cfg.spec or (_recipe(cfg, source)["model"] if cfg.recipe else None)
    return merge_spec(spec, cfg.overrides).get("type") if spec else None


def _recipe(cfg: ModelConfig, source: str) -> dict:
    """The recipe `model.recipe` names; an unknown name is a ConfigError naming the file and key."""
    from polymodal.models.recipes import get_recipe

    try:
        return get_recipe(cfg.recipe)
    except ConfigError as exc:
        raise ConfigError(f"{source}: model.recipe: {exc}") from None


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


def _load_matching(model: nn.Module, directory: Path, part: str | None = None, source: str = "model.init_from") -> None:
    """Copy every tensor of the checkpoint whose name and shape the model has; log the rest.
    With `part` (a top-level part or dotted path), only that part's tensors."""
    from safetensors.torch import load_file

    from polymodal.checkpoint import WEIGHTS_NAME

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}; {source} needs a polymodal checkpoint")
    state = load_file(str(path))
    own = model.state_dict()
    if part is not None:
        if not isinstance(part, str) or not any(k.startswith(part + ".") for k in own):
            parts = sorted({k.split(".")[0] for k in own})
            raise ConfigError(f"{source}: the model has no part {part!r} (its parts: {', '.join(parts)})")
        state = {k: v for k, v in state.items() if k.startswith(part + ".")}
        own = {k: v for k, v in own.items() if k.startswith(part + ".")}
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k not in fit)
    new = sorted(k for k in own if k not in state)
    model.load_state_dict(fit, strict=False)
    log.info("%s %s: %d tensors loaded, %d skipped (%s), %d new (%s)", source, directory, len(fit),
             len(skipped), ", ".join(skipped[:4]), len(new), ", ".join(new[:4]))
    if not fit:
        raise CheckpointError(f"{directory}: no tensor of this checkpoint fits the model; is it the right one?")


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
