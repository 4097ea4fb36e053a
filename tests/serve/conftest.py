"""Fixtures of the serving tests: tiny models trained here in seconds, and real uvicorn servers
on loopback ports (a server thread per model, torn down after the module)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))  # the trainer tests' synthetic data

pytest.importorskip("fastapi")
pytest.importorskip("multipart")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain little from a second thread, and lose a lot when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """{"vqa": checkpoint, "caption": checkpoint}: a VQA classifier and a captioner trained for a few
    seconds on solid-colour images (tests/train/_synthetic.py), so their answers differ from image
    to image and question to question (a mixed-up batch shows)."""
    from _helpers import processor_for, run_config
    from _synthetic import VQA_ANSWERS, collator, records

    from polymodal.train import train

    out = tmp_path_factory.mktemp("serve-models")
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vqa = train(run_config("vqa-tiny", "vqa", out / "vqa", steps=100, batch_size=32,
                               model={"overrides": {"labels": VQA_ANSWERS}}),
                    train_records=records("vqa", 256), collate_fn=collator(processor_for("vqa-tiny")))
        cap = train(run_config("captioner-tiny", "captioning", out / "cap", steps=80),
                    train_records=records("captioning", 256), collate_fn=collator(processor_for("captioner-tiny")))
    finally:
        torch.set_num_threads(n)
    return {"vqa": str(vqa.last_checkpoint), "caption": str(cap.last_checkpoint)}


@pytest.fixture(scope="session")
def clip_ckpt(tmp_path_factory):
    """An untrained clip-tiny checkpoint: embeddings differ for every image and text."""
    import polymodal
    from polymodal.checkpoint import save_checkpoint
    from polymodal.models.recipes import get_recipe
    from polymodal.processing import Processor

    path = tmp_path_factory.mktemp("clip") / "ckpt"
    torch.manual_seed(0)
    save_checkpoint(path, polymodal.create_model("clip-tiny"), Processor.from_spec(get_recipe("clip-tiny")["processor"]),
                    recipe="clip-tiny", task="retrieval")
    return str(path)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Five coloured images and one broken file, for --index."""
    from _synthetic import NAMES, image

    d = tmp_path_factory.mktemp("index")
    rng = np.random.default_rng(5)
    for c in NAMES[:5]:
        Image.fromarray(image(c, rng)).save(d / f"{c}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d
