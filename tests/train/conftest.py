import copy

import pytest
import torch

import polymodal.models  # noqa: F401  (registers the parts)
from polymodal.models.recipes import get_recipe
from polymodal.processing import Processor
from polymodal.registry import FUSIONS

from _synthetic import collator, records  # noqa: E402

#: Recipes with a fusion module build only once polymodal.models.fusion exists.
needs_fusion = pytest.mark.skipif("cross_transformer" not in FUSIONS,
                                  reason="fusion modules (polymodal.models.fusion) not merged yet")

IMAGE = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain little from a second thread, and lose a lot when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.fixture
def tiny_run():
    """(recipe, task, tmp dir, n_train, **config sections) -> (TrainResult, train records)."""
    from polymodal.train import train

    def go(recipe, task, out, n_train=256, ids_by_colour=False, val=None, **kw):
        recs = records(task, n_train, seed=0, ids_by_colour=ids_by_colour)
        val_recs = records(task, val, seed=1, ids_by_colour=ids_by_colour) if val else None
        res = train(run_config(recipe, task, out, **kw), train_records=recs, val_records=val_recs,
                    collate_fn=collator(processor_for(recipe)))
        return res

    return go
