"""`polymodal.load`: one object per model with the task methods its model supports; the one
inference protocol of native and Hugging Face models (their defaults, `GenerationOptions`).

A `LoadedModel` carries its pre-processing. Task methods it does not support raise
`UnsupportedTaskError` with a sentence a user understands. The CLI is a thin layer over these
objects, never a second implementation.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from polymodal.errors import CheckpointError, ConfigError, UnsupportedTaskError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------- defaults of every backend
#: the zero-shot classification prompt (CLIP's): each label fills the {}
ZERO_SHOT_TEMPLATE = "a photo of a {}."
#: images per forward pass: polymodal's own models are small and batch wide; Hugging Face
#: checkpoints are larger (a call's or load's `batch_size` wins)
NATIVE_BATCH_SIZE = 32
HF_BATCH_SIZE = 8
#: generation settings of polymodal's own decoders when a call leaves them unset (Hugging Face
#: checkpoints bring their own: their generation_config.json decides what a call leaves unset)
NATIVE_GENERATION = {"num_beams": 1, "do_sample": False, "max_new_tokens": 20}


def quantize_int8(model, device) -> Any:
    """Dynamic int8 quantisation of a model's `nn.Linear` layers for CPU inference
    (`torch.ao.quantization.quantize_dynamic`: int8 weights, activations quantised per batch on
    the fly). Outputs change (docs/benchmarks.md reports how much beside the speed); layers that
    are not `nn.Linear` (convolutions, GPT-2's `Conv1D`) stay float32. `load(..., int8=True)`."""
    import torch

    if torch.device(device).type != "cpu":
        raise ConfigError(f"int8=True: dynamic int8 quantisation runs on the CPU only, and this model is on "
                          f"{device}; load it with device='cpu', or without int8")
    import warnings

    # torch.ao.quantization is deprecated by PyTorch in favour of the torchao package: its notices
    # (at import and while converting) are not the user's to act on
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.ao\.")
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError as exc:
            raise ConfigError(f"int8=True needs torch.ao.quantization.quantize_dynamic, which this torch "
                              f"{torch.__version__} no longer has; load without int8") from exc
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True)
class GenerationOptions:
    """How a model writes text, for every backend: `caption`, `answer`, `translate` take these.

    Options left at None are not passed to `generate`, so the model's defaults decide them.
    `seed` seeds sampling without touching the caller's global RNG state (`seeded()`).

    Args:
        max_new_tokens, max_length: the generation length (new tokens, or tokens in all).
        num_beams: beam search width (1: greedy, or sampling).
        do_sample, temperature, top_p: sampling.
        repetition_penalty: divide the score of every token already written by this (> 1:
            fewer repeats; CTRL, Keskar et al. 2019); no_repeat_ngram_size: never write an
            n-gram of this size twice (transformers' meaning of both).
        seed: makes sampling repeatable.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    num_beams: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    seed: int | None = None

    def __post_init__(self):
        for name in ("max_length", "max_new_tokens", "num_beams", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @classmethod
    def of(cls, options: "GenerationOptions | dict | None" = None, **kwargs) -> "GenerationOptions":
        """Options from an instance, a mapping or keywords; an unknown name is a ConfigError."""
        merged = {**(asdict(options) if isinstance(options, GenerationOptions) else dict(options or {})), **kwargs}
        unknown = set(merged) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown generation option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**merged)

    def generate_kwargs(self, defaults: dict | None = None) -> dict:
        """Keyword arguments of `transformers` `generate`: the options set, then `defaults` for
        the rest (a default length only when neither length is set); sampling knobs are dropped
        when sampling is off (they would do nothing)."""
        kw = {k: v for k, v in asdict(self).items() if v is not None and k != "seed"}
        for key, value in (defaults or {}).items():
            if key in ("max_new_tokens", "max_length") and ("max_new_tokens" in kw or "max_length" in kw):
                continue
            kw.setdefault(key, value)
        if kw.get("do_sample") is False:
            kw.pop("temperature", None)
            kw.pop("top_p", None)
        return kw

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """Run the block with torch's RNG seeded by `seed` (when set) on a forked RNG: the
        caller's global random state is the same afterwards."""
        import torch

        if self.seed is None:
            yield
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            yield


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

    def classify(self, images: Sequence[Any], labels: Sequence[str], template: str = ZERO_SHOT_TEMPLATE,
                 **kw) -> list[dict]:
        self._unsupported("classify images")

    def embed_images(self, images: Sequence[Any]):
        self._unsupported("embed images")

    def embed_texts(self, texts: Sequence[str]):
        self._unsupported("embed texts")

    def retrieve(self, query, images: Sequence[Any], top_k: int = 5) -> list[dict]:
        self._unsupported("retrieve images")

    def can_match(self) -> bool:
        """Whether `match` (an image-text matching head's probability) works for this model."""
        return False

    def match(self, images: Sequence[Any], texts: Sequence[str]):
        self._unsupported("match images with texts (it has no image-text matching head)")

    def can_score_captions(self) -> bool:
        """Whether `caption_logprob` (a captioner's likelihood of a text given its image) works."""
        return False

    def caption_logprob(self, images: Sequence[Any], texts: Sequence[str]):
        self._unsupported("score captions by their likelihood (it is not an encoder-decoder captioner)")

    def translate(self, images: Sequence[Any], texts: Sequence[str], **generation) -> list[str]:
        self._unsupported("translate")

    def ground(self, images: Sequence[Any], texts: Sequence[str]) -> list[dict]:
        self._unsupported("ground referring expressions")

    def detect(self, images: Sequence[Any], texts: Sequence[str], threshold: float = 0.5) -> list[list[dict]]:
        self._unsupported("detect what a text names")

    def explain(self, images: Sequence[Any], texts: Sequence[str] | None = None, method: str | None = None,
                **kwargs):
        """Heat maps of what the model looked at: one `polymodal.explain.Explanation` per image
        (the `explain` task, polymodal.tasks.explain; methods and targets in polymodal.explain)."""
        if "explain" not in self.tasks:
            self._unsupported("explain its predictions")
        from polymodal.tasks import get_task

        return get_task("explain").run(self, images, texts=texts, method=method, **kwargs)


def load(source, **kwargs) -> LoadedModel:
    """Load a polymodal checkpoint dir, a Hugging Face model dir, or a recipe name.

    Args:
        source: a directory path or a registered recipe name.
        kwargs: passed to the specific loader: `device`, `batch_size`, `bf16` (bf16 autocast),
            `int8` (dynamic int8 quantisation of the Linear layers, CPU: `quantize_int8`), and
            for Hugging Face directories `fast_preprocess`.
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
