"""Helpers of the trainer tests (importable by name; conftest.py modules are not, as several exist)."""
import copy

from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor

import polymodal.models  # noqa: F401  (registers the parts)

IMAGE = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def processor_for(recipe: str) -> Processor:
    return Processor.from_spec({**get_recipe(recipe)["processor"], "image": IMAGE})


def run_config(recipe: str, task: str, out, steps: int = 40, lr: float = 2e-3, batch_size: int = 16,
               **sections) -> dict:
    """A run config for tests: 32 px images, no progress bar, a checkpoint only at the end."""
    cfg = {"task": task, "model": {"recipe": recipe, "processor": {"image": {"image_size": 32}}},
           "optim": {"lr": lr, "max_steps": steps, "batch_size": batch_size, "warmup_steps": 5, "weight_decay": 0.0},
           "checkpointing": {"every": 0, "keep_last": 1},
           "logging": {"every": 5, "progress": False, "plot": False, "tensorboard": False},
           "output_dir": str(out), "precision": "no"}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **copy.deepcopy(value)} if isinstance(value, dict) else value
    return cfg


