"""Drawing boxes with labels on an image (Pillow): what `polymodal ground --out` and the demo
report show."""
from __future__ import annotations

from typing import Any, Sequence

#: outline colours, one per box in turn (bright on the shapes world's dark backgrounds)
PALETTE = ((255, 60, 60), (60, 220, 60), (255, 220, 0), (0, 200, 255), (255, 0, 255), (255, 255, 255))


def draw_boxes(image: Any, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None,
               scale: int = 1, width: int = 1) -> "Image.Image":
    """A copy of `image` with each box outlined and its label written above it.

    Args:
        image: a path, PIL image or array. boxes: [x0, y0, x1, y1] in pixels of the image
            ([x0, x1) ranges: the outline covers pixels x0 .. x1 - 1).
        labels: one text per box (None: no text).
        scale: enlarge the image this many times first (nearest neighbour), so labels are legible
            on small images; boxes are scaled with it.
        width: outline width in (scaled) pixels.
    """
    from PIL import Image, ImageDraw

    from polymodal.data.images import load_image

    img = load_image(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    else:
        img = img.copy()
    draw = ImageDraw.Draw(img)
    for k, box in enumerate(boxes):
        colour = PALETTE[k % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([round(x0), round(y0), round(x1) - 1, round(y1) - 1], outline=colour, width=width)
        if labels is not None and k < len(labels) and labels[k]:
            ty = y0 - 11 if y0 >= 11 else y1 + 1
            draw.text((round(x0), round(ty)), labels[k], fill=colour)
    return img
