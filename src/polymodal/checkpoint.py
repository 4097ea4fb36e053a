"""The checkpoint directory: one function writes it, one reads it.

    config.json        {"polymodal_version", "model": spec, "processor": spec, "recipe", "task", ...}
    model.safetensors  the weights (never pickle)
    tokenizer files    written by the processor

Writes are atomic: everything goes to a temporary sibling directory which is then renamed, so a
killed process never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from polymodal import __version__
from polymodal.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, processor=None, **meta: Any) -> Path:
    """Write `model` (+ its processor and any JSON-able `meta`, e.g. recipe/task) to `directory`.

    Args:
        directory: target; replaced atomically if it exists.
        model: a polymodal model family (has `export_spec()`).
        processor: its `Processor`, or None.
        meta: extra JSON fields stored in config.json (recipe name, task, training provenance).
    """
    from safetensors.torch import save_model

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        config = {"polymodal_version": __version__, "model": model.export_spec(),
                  "processor": processor.save(tmp) if processor is not None else None, **meta}
        save_model(model, str(tmp / WEIGHTS_NAME))  # handles tied weights (GPT-2 lm_head / wte)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False))
        _ordinary_permissions(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _ordinary_permissions(directory: Path) -> None:
    """Give the folder and its files the modes any new file gets here (0777 / 0666 less the
    umask). mkdtemp makes the folder private and safetensors writes its file 0600, which left
    model.safetensors unreadable to others while the tokenizer files beside it were not."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and removed after."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_NAME}; is this a polymodal checkpoint directory?")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def load_checkpoint(directory: str | os.PathLike, device: str = "cpu"):
    """Rebuild the exact model (and processor) saved in `directory`, without its original recipe.

    Returns:
        (model in eval mode, processor or None, config dict)
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from polymodal.models import build_model
    from polymodal.processing import Processor

    directory = Path(directory)
    config = read_config(directory)
    if "model" not in config:
        raise CheckpointError(f"{directory / CONFIG_NAME}: no 'model' entry; not a polymodal checkpoint")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}; the checkpoint is incomplete — "
                              "re-save it or resume the training run that wrote it")
    model = build_model(config["model"], source=str(directory / CONFIG_NAME))
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file ({exc})") from exc
    load_state_checked(model, state, str(weights))
    processor = None
    if config.get("processor"):
        processor = Processor.from_spec(config["processor"], f"{directory / CONFIG_NAME}: processor", directory)
    return model.to(device).eval(), processor, config


def load_state_checked(model: nn.Module, state: dict, source: str) -> None:
    """Load `state` into `model`, checking every tensor's name and shape; tied weights may be absent."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    # safetensors' save_model drops one name of each tied pair; those are fine to miss.
    tied = {k for k in missing if _is_tied(model, k, state)}
    missing = [k for k in missing if k not in tied]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    if shape:
        problems.append("shape mismatch: " + "; ".join(shape[:5]))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model in config.json — {' | '.join(problems)}")
    model.load_state_dict(state, strict=False)


def _is_tied(model: nn.Module, key: str, state: dict) -> bool:
    """True if parameter `key` shares storage with a parameter whose name is in `state`."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if key not in params:
        return False
    ptr = params[key].data_ptr()
    return any(p.data_ptr() == ptr and n in state for n, p in params.items() if n != key)
