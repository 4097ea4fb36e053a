"""What trains and what stays fixed: frozen parts, LoRA adapters (through peft), and merging
the adapters back for saving."""
from __future__ import annotations

import copy
import warnings

from torch import nn

from polymodal.errors import ConfigError
from polymodal.train.config import LoraConfig


def freeze(model: nn.Module, names: list, source: str) -> None:
    """Fix the parameters of the named parts (`vision`, `text.encoder.layer.0`, or a parameter)."""
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


def add_lora(model: nn.Module, cfg: LoraConfig, frozen: list, source: str) -> nn.Module:
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


def merged_for_saving(setup, model: nn.Module) -> nn.Module:
    """The plain polymodal model to write: LoRA adapters merged into a copy, else the model itself."""
    if not setup.lora:
        return model
    return copy.deepcopy(model).merge_and_unload()
