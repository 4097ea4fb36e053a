"""Data: dataset specs and readers (records are plain dicts), the shapes world, robust image
decoding, torch datasets and per-task collators. See docs/data.md.

Light to import: torch-based parts (`polymodal.data.dataset`, `polymodal.data.collate`) are
imported only when used.
"""
from polymodal.data.fields import FIELDS
from polymodal.data.formats import open_dataset, parse_spec
from polymodal.data.images import load_image

__all__ = ["FIELDS", "open_dataset", "parse_spec", "load_image"]
