"""Draw docs/images/shapes_examples.png: a few shapes-world scenes with a caption and a question each.

Run from the repository root:  python docs/make_shapes_figure.py
(the same as `polymodal data generate shapes ... --preview PNG`; the figure has English text only,
as no CJK font can be assumed: the Chinese captions are listed in docs/data.md).
"""
from pathlib import Path

from polymodal.data import shapes

if __name__ == "__main__":
    out = Path(__file__).parent / "images" / "shapes_examples.png"
    shapes.preview(out, n=8, seed=0, size=64)
    print(f"wrote {out}")
