"""`polymodal.load`: one object per model with the task methods its model supports.

A `LoadedModel` carries its pre-processing. Task methods it does not support raise
`UnsupportedTaskError` with a sentence a user understands. The CLI and the HTTP server are
thin layers over these objects, never a second implementation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from polymodal.errors import CheckpointError, UnsupportedTaskError

log = logging.getLogger(__name__)


class LoadedModel:
    """Base class: a model plus its processor. Subclasses override the tasks they support."""

    #: one-word description used in error messages, e.g. "captioner"
    kind: str = "model"
    #: the task method names this object supports, e.g. ("caption",)
    tasks: tuple[str, ...] = ()

    def __getattr__(self, name: str):
        # The method of a task registered outside this class (`Task.run`, polymodal.tasks):
        # `loaded.<method>(images, ...)` runs it when the model offers it.
        if name.startswith("_"):
            raise AttributeError(name)
        from polymodal.tasks import task_of_method

        task = task_of_method(name)
        if task is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        if name not in self.tasks:
            return lambda *args, **kwargs: self._unsupported(f"{name} ({task.name})")
        return lambda *args, **kwargs: task.run(self, *args, **kwargs)

    def _unsupported(self, task: str):
        can = ", ".join(self.tasks) or "nothing"
        raise UnsupportedTaskError(f"this checkpoint is a {self.kind}; it cannot {task}. It supports: {can}")

    def caption(self, images: Sequence[Any], **generation) -> list[str]:
        self._unsupported("caption images")

    def answer(self, images: Sequence[Any], questions: Sequence[str], **generation) -> list[str]:
        self._unsupported("answer questions")

    def classify(self, images: Sequence[Any], labels: Sequence[str], **kw) -> list[dict]:
        self._unsupported("classify images")

    def embed_images(self, images: Sequence[Any]):
        self._unsupported("embed images")

    def embed_texts(self, texts: Sequence[str]):
        self._unsupported("embed texts")

    def retrieve(self, query, images: Sequence[Any], top_k: int = 5) -> list[dict]:
        self._unsupported("retrieve images")

    def translate(self, images: Sequence[Any], texts: Sequence[str], **generation) -> list[str]:
        self._unsupported("translate")

    def explain(self, *args, **kwargs):
        self._unsupported("explain its predictions")


def load(source, **kwargs) -> LoadedModel:
    """Load a polymodal checkpoint dir, a Hugging Face model dir, or a recipe name.

    Args:
        source: a directory path or a registered recipe name.
        kwargs: passed to the specific loader (e.g. `device`, `dtype`).
    """
    path = Path(str(source)).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path}: no config.json; a polymodal checkpoint or Hugging Face "
                                  "model directory needs one")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from exc
        if "polymodal_version" in cfg:
            from polymodal.infer.native import load_native

            return load_native(path, **kwargs)
        from polymodal.infer.hf import load_hf

        return load_hf(path, **kwargs)
    from polymodal.models.recipes import list_recipes

    if str(source) in list_recipes():
        from polymodal.infer.native import load_recipe

        return load_recipe(str(source), **kwargs)
    raise CheckpointError(f"{source!s}: neither a directory nor a recipe name; "
                          "run `polymodal models` for the recipes")
