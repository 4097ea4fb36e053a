"""The overlay PNG: the image, the image under its heat map (a matplotlib colour map, blended
with Pillow), what was explained and the model's answer; for a model that writes text, one small
overlay per generated token beneath."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from polymodal.explain.core import Explanation

PANEL = 256          # side of the main panels, pixels
TOKEN_PANEL = 96     # side of a per-token panel
MAX_TOKENS = 12      # per-token panels shown


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def heat(image: Image.Image, m: np.ndarray, side: int, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """`image` resized to side x side (aspect kept inside), blended with the coloured map `m` (H, W)."""
    from matplotlib import colormaps

    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = image.convert("RGB").resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
    m = np.asarray(Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).resize(size, Image.BILINEAR)) / 255.0
    colour = Image.fromarray((colormaps[cmap](m)[..., :3] * 255).astype(np.uint8))
    return Image.blend(base, colour, alpha)


def render_overlay(ex: Explanation, image, out=None, title: str | None = None) -> Image.Image:
    """The overlay of `ex` on `image` (a path, PIL image or array), written to `out` (PNG) when given."""
    from polymodal.data.images import load_image

    img = load_image(image)
    left = img.convert("RGB").resize(heat(img, ex.map, PANEL).size, Image.NEAREST)
    right = heat(img, ex.map, PANEL)
    lines = [title or f"method: {ex.method}"]
    if ex.text:
        lines += textwrap.wrap(f"text: {ex.text}", 70)
    if ex.answer is not None or ex.score is not None:
        score = f"  (score {ex.score:.3f})" if ex.score is not None else ""
        lines += textwrap.wrap(f"answer: {ex.answer if ex.answer is not None else ''}{score}", 70)
    font, small = _font(14), _font(11)
    tokens = ex.tokens[:MAX_TOKENS]
    per_row = 6
    token_rows = (len(tokens) + per_row - 1) // per_row
    width = max(2 * PANEL + 30, per_row * (TOKEN_PANEL + 8) + 10)
    height = 10 + left.size[1] + 10 + 18 * len(lines) + token_rows * (TOKEN_PANEL + 24) + 10
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(left, (10, 10))
    canvas.paste(right, (20 + PANEL, 10))
    draw = ImageDraw.Draw(canvas)
    y = 20 + left.size[1]
    for line in lines:
        draw.text((10, y), line, fill="black", font=font)
        y += 18
    for k, t in enumerate(tokens):
        x, yy = 10 + (k % per_row) * (TOKEN_PANEL + 8), y + (k // per_row) * (TOKEN_PANEL + 24)
        canvas.paste(heat(img, t.map, TOKEN_PANEL), (x, yy))
        draw.text((x, yy + TOKEN_PANEL + 4), t.token[:14], fill="black", font=small)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out)
    return canvas
