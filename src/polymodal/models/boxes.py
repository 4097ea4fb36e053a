"""Box arithmetic in torch, shared by the text-queried detector, its loss and its predictions.

Boxes are either (cx, cy, w, h) or (x0, y0, x1, y1), as fractions of the image's width and
height unless a function says pixels. Generalised IoU after Rezatofighi et al., 2019 ("Generalized
Intersection over Union"), as DETR (Carion et al., 2020) uses it for matching and loss.
"""
from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre / size -> corners."""
    c, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([c - wh / 2, c + wh / 2], -1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> centre / size."""
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return torch.cat([(lo + hi) / 2, hi - lo], -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...); an inverted box has area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of every pair: (N, 4), (M, 4) xyxy -> (N, M), (N, M)."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])                     # (N, M, 2)
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)                                # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union.clamp(min=1e-9), union


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of every pair: (N, 4), (M, 4) xyxy -> (N, M) in [-1, 1].

    IoU minus the share of the smallest enclosing box that neither box covers; unlike IoU it
    still has a gradient when the boxes do not overlap.
    """
    iou, union = pairwise_iou(a, b)
    lo = torch.minimum(a[:, None, :2], b[None, :, :2])
    hi = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    enclosing = (hi - lo).clamp(min=0).prod(-1)                            # (N, M)
    return iou - (enclosing - union) / enclosing.clamp(min=1e-9)


def elementwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching pairs: (..., 4), (..., 4) xyxy -> (...)."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-9)


def elementwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matching pairs: (..., 4), (..., 4) xyxy -> (...)."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    lo, hi = torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])
    enclosing = (hi - lo).clamp(min=0).prod(-1)
    return inter / union.clamp(min=1e-9) - (enclosing - union) / enclosing.clamp(min=1e-9)


def batched_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of every pair within each batch row: (B, N, 4), (B, M, 4) xyxy -> (B, N, M)."""
    return elementwise_giou(a[:, :, None, :], b[:, None, :, :])


def to_pixels(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """(..., 4) xyxy fractions -> pixels of a width x height image, clipped to the image."""
    scale = boxes.new_tensor([width, height, width, height])
    return (boxes.clamp(0, 1) * scale)
