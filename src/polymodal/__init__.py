"""polymodal: multimodal (vision + language) Transformer models on today's Hugging Face stack.

The public Python interface (stable):

    polymodal.list_models()            # registered recipe names
    polymodal.create_model(name, **o)  # a model (nn.Module) from a recipe
    polymodal.load(source)             # a ready model object: checkpoint dir, recipe name or HF dir
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["list_models", "create_model", "load", "__version__"]


def list_models() -> list[str]:
    """Names of the registered recipes (named model configurations)."""
    from polymodal.models.recipes import list_recipes

    return list_recipes()


def create_model(name: str, **overrides):
    """Build the model of recipe `name`; `overrides` replace top-level keys of its model spec."""
    from polymodal.models.recipes import create_model as _create

    return _create(name, **overrides)


def load(source, **kwargs):
    """A ready model object from a polymodal checkpoint dir, a recipe name or a Hugging Face dir."""
    from polymodal.infer.loaded import load as _load

    return _load(source, **kwargs)
