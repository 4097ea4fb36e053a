"""Interpretability: heat maps of what a model looked at, for every family, and their quality.

    import polymodal
    m = polymodal.load("runs/vqa/best")
    ex = m.explain(["scene.png"], ["What color is the small cross?"])[0]
    ex.map          # (H, W) float32 in [0, 1], the image's size
    render(ex, "scene.png", "heat.png")

`explain(loaded, images, texts, method)` is what `LoadedModel.explain` runs (through the
`explain` task, polymodal.tasks.explain). Methods: `METHODS` (core.py); the attention methods in
attention.py, the families' targets in native.py, Hugging Face checkpoints in hf.py; the
pointing game and the deletion curve, which measure a method, in quality.py.
"""
from __future__ import annotations

from typing import Any, Sequence

from polymodal.errors import UnsupportedTaskError
from polymodal.explain.core import METHODS, Explanation, TokenMap

__all__ = ["explain", "Explanation", "TokenMap", "METHODS", "render", "methods_of"]


def explain(loaded, images: Sequence[Any], texts: Sequence[str] | None = None, method: str | None = None,
            target: str | None = None, max_new_tokens: int = 20) -> list[Explanation]:
    """Explain a loaded model's outputs on `images` (paths, PIL images or arrays).

    Args:
        loaded: a `polymodal.load(...)` model.
        images: one image or a list.
        texts: one question / text per image (fusion and dual encoders, translators, generative
            VQA); None for captioners.
        method: one of `METHODS` that the model offers (`methods_of(loaded)`); None: its default.
        target: fusion encoders: "answer" (the predicted class), "itm" or "itc"; None: the first
            the model has.
        max_new_tokens: encoder-decoders: the length of the output explained.

    Returns:
        one `Explanation` per image; its `image` is set where the image was given as a path.
    """
    from polymodal.infer.inputs import as_image_list, check_pairs, check_texts, read_image

    items = as_image_list(images)
    pils = [read_image(im, i) for i, im in enumerate(items)]
    if texts is not None:
        texts = check_texts([texts] if isinstance(texts, str) else list(texts), "text")
        check_pairs(pils, texts)
    out = _backend(loaded)(loaded, pils, texts, method, target=target, max_new_tokens=max_new_tokens)
    for item, ex in zip(items, out):
        ex.image = str(item) if isinstance(item, (str,)) or hasattr(item, "__fspath__") else None
    return out


def methods_of(loaded, target: str | None = None) -> tuple[str, ...]:
    """The explanation methods a loaded model offers, its default first."""
    from polymodal.infer.native import NativeModel

    if isinstance(loaded, NativeModel):
        from polymodal.explain.native import default_method, offered

        methods = offered(loaded.model, target)
        first = default_method(loaded.model if target != "itc" else None)
    else:
        from polymodal.explain.hf import offered

        methods = offered(loaded)
        first = methods[0]
    return (first,) + tuple(m for m in methods if m != first)


def _backend(loaded):
    from polymodal.infer.native import NativeModel

    if isinstance(loaded, NativeModel):
        from polymodal.explain.native import explain_native

        return explain_native
    from polymodal.explain import hf

    fn = hf.backend(loaded)
    if fn is None:
        raise UnsupportedTaskError(f"polymodal cannot explain a {type(loaded).__name__} yet; it explains its own "
                                   f"models and Hugging Face {', '.join(hf.EXPLAINED)} checkpoints")
    return fn


def render(explanation: Explanation, image, out=None, **kwargs):
    """The overlay of `explanation` on `image` (a PIL image), written as a PNG to `out` when given:
    the image, the image under the coloured map, the text and the answer, and per-token maps
    (see polymodal.explain.overlay)."""
    from polymodal.explain.overlay import render_overlay

    return render_overlay(explanation, image, out, **kwargs)
