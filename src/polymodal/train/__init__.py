"""Training: `train(config)` runs pretraining or fine-tuning on Hugging Face Accelerate.

    from polymodal.train import train
    train("configs/shapes/caption.yaml", overrides=["optim.max_steps=200"], output_dir="runs/cap")

Importing this package stays light; the training stack loads when `train` runs.
"""
from __future__ import annotations

__all__ = ["train", "load_run_config"]


def train(*args, **kwargs):
    """See `polymodal.train.trainer.train`."""
    from polymodal.train.trainer import train as _train

    return _train(*args, **kwargs)


def load_run_config(*args, **kwargs):
    """See `polymodal.train.config.load_run_config`."""
    from polymodal.train.config import load_run_config as _load

    return _load(*args, **kwargs)
