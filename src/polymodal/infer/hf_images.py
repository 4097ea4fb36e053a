"""A batched stand-in for a Hugging Face image processor (the common resize/crop/normalise kind),
built on polymodal's one batched normalisation (`polymodal.processing.to_pixel_values`).

Hugging Face's PIL-backend processors handle each image alone: numpy round trips, a channel
transpose, a float64 rescale and a normalise per image. Here only the resize is per image
(PIL, with the checkpoint's own `resample` and the same output size, so the pixels are the
same); rescale + normalise become one 256-entry lookup table per channel, computed with the
same order and precision as transformers, so the output is bit-identical (checked against
the real processors in tests/infer/test_hf.py).

Only the settings listed in `TensorImageProcessor.from_hf` are understood; any other
processor (padding, tiling, longest-edge rules...) gets `None` and keeps the HF processor.
"""
from __future__ import annotations

import logging
from math import ceil
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: processor attributes that change the output and that this module does not implement
_UNSUPPORTED_FLAGS = ("do_pad", "do_reduce_labels", "do_image_splitting", "do_flip_channel_order")


class TensorImageProcessor:
    """Resize (PIL) -> centre crop -> rescale -> normalise, batched; returns (B, 3, H, W) float32.

    Args:
        size: (height, width) for a fixed-size resize, or None.
        shortest_edge: resize so the shorter side has this length (aspect kept), or None.
        resample: PIL resampling filter code (2 = bilinear, 3 = bicubic...).
        crop: (height, width) of a centre crop after the resize, or None.
        rescale: factor applied to the uint8 values (1/255), or None.
        mean, std: per-channel normalisation, or None.
    """

    def __init__(self, size: tuple[int, int] | None, shortest_edge: int | None, resample: int,
                 crop: tuple[int, int] | None, rescale: float | None,
                 mean: Sequence[float] | None, std: Sequence[float] | None):
        self.size, self.shortest_edge, self.resample = size, shortest_edge, int(resample)
        self.crop, self.rescale, self.mean, self.std = crop, rescale, mean, std
        self.lut = self._lookup_table()  # (3, 256)

    @classmethod
    def from_hf(cls, proc: Any) -> "TensorImageProcessor | None":
        """Mirror `proc`'s settings, or None when it does something this class does not."""
        name = type(proc).__name__
        flags = [f for f in _UNSUPPORTED_FLAGS if getattr(proc, f, False)]
        if flags:
            log.info("%s sets %s; keeping the Hugging Face image processor", name, flags)
            return None
        size = shortest = None
        if getattr(proc, "do_resize", False):
            hw = (_field(proc.size, "height"), _field(proc.size, "width"))
            shortest = _field(proc.size, "shortest_edge")
            others = [k for k in ("longest_edge", "max_height", "max_width", "max_pixels", "min_pixels")
                      if _field(proc.size, k)]
            if others or (shortest is None) == (None in hw):
                log.info("%s has resize rule %s; keeping the Hugging Face image processor", name, proc.size)
                return None
            size = None if None in hw else hw
        crop = None
        if getattr(proc, "do_center_crop", False):
            crop = (_field(proc.crop_size, "height"), _field(proc.crop_size, "width"))
            if None in crop:
                return None
        resample = getattr(proc, "resample", None)
        resample = 2 if resample is None else int(getattr(resample, "value", resample))
        rescale = proc.rescale_factor if getattr(proc, "do_rescale", False) else None
        norm = getattr(proc, "do_normalize", False)
        mean, std = (_per_channel(proc.image_mean), _per_channel(proc.image_std)) if norm else (None, None)
        return cls(size=size, shortest_edge=shortest, resample=resample, crop=crop, rescale=rescale,
                   mean=mean, std=std)

    def __call__(self, images: Sequence) -> "torch.Tensor":  # noqa: F821
        """RGB PIL images -> pixel values (B, 3, H, W) float32 (`polymodal.processing.to_pixel_values`)."""
        from polymodal.processing import to_pixel_values

        return to_pixel_values([self._resize_crop(img) for img in images], self.lut)

    def _lookup_table(self) -> np.ndarray:
        """(3, 256) float32: pixel value -> output, with transformers' arithmetic (rescale in
        float64 then cast to float32; (x - mean) / std in float32), so results are bit-equal."""
        v = np.arange(256, dtype=np.float64)
        v = (v * self.rescale).astype(np.float32) if self.rescale is not None else v.astype(np.float32)
        rows = [v] * 3
        if self.mean is not None:
            rows = [(v - np.float32(m)) / np.float32(s) for m, s in zip(self.mean, self.std)]
        return np.stack(rows).astype(np.float32)

    def _resize_crop(self, img) -> np.ndarray:
        w, h = img.size
        if self.size is not None:
            img = img.resize((self.size[1], self.size[0]), resample=self.resample)
        elif self.shortest_edge is not None:
            # transformers' get_resize_output_image_size(default_to_square=False)
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
            if (new_h, new_w) != (h, w):
                img = img.resize((new_w, new_h), resample=self.resample)
        arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
        if self.crop is not None:
            arr = _center_crop(arr, *self.crop)
        return arr


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers' centre crop: crop where the image is large enough, zero-pad where not."""
    h, w = arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return arr[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    padded = np.zeros((nh, nw, arr.shape[2]), dtype=arr.dtype)
    tp, lp = ceil((nh - h) / 2), ceil((nw - w) / 2)
    padded[tp:tp + h, lp:lp + w] = arr
    top, left = (nh - ch) // 2, (nw - cw) // 2
    return padded[top:top + ch, left:left + cw]


def _field(size: Any, key: str):
    """A size entry from a dict (transformers 4) or a SizeDict (transformers 5)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _per_channel(v) -> list[float]:
    v = [float(x) for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v])]
    return v * 3 if len(v) == 1 else v
