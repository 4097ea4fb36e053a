"""User-facing errors: unknown recipe, unknown / mistyped config key, missing and corrupt checkpoint files."""
import pytest

import polymodal
from polymodal.checkpoint import load_checkpoint, save_checkpoint
from polymodal.errors import CheckpointError, ConfigError
from polymodal.models.recipes import get_recipe, read_recipe_file
from polymodal.processing import Processor


def test_unknown_recipe_names_known_ones():
    with pytest.raises(ConfigError, match=r"unknown recipe 'clip-huge'.*clip-tiny"):
        polymodal.create_model("clip-huge")


def test_unknown_key_names_key_and_file():
    with pytest.raises(ConfigError, match=r"clip-tiny\.yaml: model\.vision\.dimm: unknown key"):
        polymodal.create_model("clip-tiny", vision={"type": "conv_stem", "dimm": 32})
    with pytest.raises(ConfigError, match=r"model\.embed_dimm: unknown key"):
        polymodal.create_model("clip-tiny", embed_dimm=3)


def test_mistyped_value_and_unknown_type():
    with pytest.raises(ConfigError, match=r"model\.vision\.dim: expected int, got '64'"):
        polymodal.create_model("clip-tiny", vision={"type": "conv_stem", "dim": "64"})
    with pytest.raises(ConfigError, match=r"model\.vision\.type: unknown vision encoder 'resnet9000'"):
        polymodal.create_model("clip-tiny", vision={"type": "resnet9000"})


def test_recipe_file_unknown_top_level_key(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("model: {type: dual_encoder}\nprocesor: {}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: unknown key\(s\) procesor"):
        read_recipe_file(f)


@pytest.fixture
def ckpt(tmp_path):
    model = polymodal.create_model("clip-tiny")
    save_checkpoint(tmp_path / "c", model, Processor.from_spec(get_recipe("clip-tiny")["processor"]), task="retrieval")
    return tmp_path / "c"


def test_missing_checkpoint_files(ckpt, tmp_path):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        load_checkpoint(tmp_path / "nothing-here")


def test_corrupt_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or unreadable"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"corrupt or unreadable"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_name_the_tensor(ckpt):
    import json
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["embed_dim"] = 32  # the file holds 64-d projections
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch: image_proj\.proj\.weight"):
        load_checkpoint(ckpt)


def test_checkpoint_save_is_atomic(ckpt, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temp dirs behind."""
    import polymodal.checkpoint as C

    before = (ckpt / "model.safetensors").read_bytes()
    model = polymodal.create_model("clip-tiny")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", boom)
    with pytest.raises(RuntimeError):
        C.save_checkpoint(ckpt, model)
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
