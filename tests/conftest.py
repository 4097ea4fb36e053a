import os

import numpy as np
import pytest
import torch

# Nothing may reach the network: make any hub call fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def images(rng):
    """Three small RGB arrays of different sizes."""
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (40, 90), (100, 30)]]
