"""Recipes: named model configurations, one YAML file each in `polymodal/configs/models/`.

A recipe file holds `description`, `task`, `model` (a family spec) and `processor`; it is
found at import like open_clip's architecture JSONs, so adding a model is adding a file.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

from polymodal.errors import ConfigError
from polymodal.registry import RECIPES
from polymodal.yamlfile import read_yaml

RECIPE_KEYS = {"description", "task", "model", "processor"}


def _recipe_dir() -> Path:
    return Path(str(resources.files("polymodal") / "configs" / "models"))


def read_recipe_file(path: Path) -> dict:
    """Parse one recipe YAML strictly (unknown top-level keys are an error naming the file)."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "model" not in data:
        raise ConfigError(f"{path}: a recipe is a mapping with at least a 'model' key")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    return data


def _register_builtin() -> None:
    for path in sorted(_recipe_dir().glob("*.yaml")):
        name = path.stem
        if name not in RECIPES:
            data = read_recipe_file(path)
            data["source"] = str(path)
            RECIPES.register(name)(lambda data=data: copy.deepcopy(data))


def list_recipes() -> list[str]:
    _register_builtin()
    return RECIPES.names()


def get_recipe(name: str) -> dict:
    """A fresh copy of recipe `name`: {description, task, model, processor, source}."""
    _register_builtin()
    return RECIPES.get(name)()


def create_model(name: str, **overrides):
    """Build recipe `name`'s model; `overrides` replace top-level keys of its model spec."""
    from polymodal.models import build_model

    recipe = get_recipe(name)
    spec = {**recipe["model"], **overrides}
    return build_model(spec, source=recipe["source"])
