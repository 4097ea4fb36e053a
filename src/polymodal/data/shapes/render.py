"""Drawing a shapes-world scene: anti-aliased polygons and discs on a noisy dark canvas, and
each object's exact bounding box."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def _vertices(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a shape centred at (cx, cy) with half-extent r, rotated by `angle` radians."""
    if shape == "square":
        h = 0.85 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "diamond":  # a rhombus taller than wide, so it never looks like a turned square
        pts = [(0, -r), (0.68 * r, 0), (0, r), (-0.68 * r, 0)]
    elif shape == "triangle":  # equilateral, pointing up, its box centred on (cx, cy)
        pts = [(0, -r), (0.866 * r, 0.5 * r), (-0.866 * r, 0.5 * r)]
        pts = [(x, y + 0.25 * r) for x, y in pts]
    elif shape == "cross":
        w, a = 0.34 * r, 0.95 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w),
               (-a, w), (-a, -w), (-w, -w)]
    else:
        raise ValueError(f"no polygon for shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


SUPERSAMPLE = 2  # objects are drawn at 2x and box-filtered down: anti-aliased edges


def _draw(draw: ImageDraw.ImageDraw, o: dict, fill) -> None:
    """Draw object `o` at SUPERSAMPLE times its scene coordinates."""
    k = SUPERSAMPLE
    cx, cy, r = o["center"][0] * k, o["center"][1] * k, o["radius"] * k
    if o["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_vertices(o["shape"], cx, cy, r, math.radians(o["angle"])), fill=fill)


def _box(o: dict, size: int) -> list[int]:
    """The object's box [x0, y0, x1, y1) in pixels: exactly the pixels its drawing touches."""
    mask = Image.new("1", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    _draw(ImageDraw.Draw(mask), o, 1)
    x0, y0, x1, y1 = mask.getbbox()
    k = SUPERSAMPLE
    return [x0 // k, y0 // k, -(-x1 // k), -(-y1 // k)]


def render(scene: dict, noise: float = 6.0, seed: Sequence[int] | int = 0) -> Image.Image:
    """Draw a scene record into an RGB PIL image.

    Args:
        scene: a record from `sample_scene`.
        noise: standard deviation (0-255 scale) of the Gaussian pixel noise; 0 for none.
        seed: seeds the noise (use the image's (seed, index)).
    """
    w, h, k = scene["width"], scene["height"], SUPERSAMPLE
    img = Image.new("RGB", (w * k, h * k), tuple(scene["background"]))
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        _draw(draw, o, tuple(o["rgb"]))
    img = img.reduce(k)
    if noise > 0:
        rng = np.random.default_rng(seed)
        arr = np.asarray(img, dtype=np.int16)  # (H, W, 3)
        arr = arr + rng.normal(0.0, noise, size=arr.shape).astype(np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img
