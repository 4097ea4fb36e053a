"""The checkpoint directory is an ordinary folder: every file gets the modes the umask allows."""
import os
import stat

import pytest

import polymodal
from polymodal.checkpoint import save_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = save_checkpoint(tmp_path / "ckpt", polymodal.create_model("clip-tiny"))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert modes == {"config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
