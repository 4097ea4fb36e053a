"""EfficientNet-Lite0: the real ImageNet weights classify real photos; the loader is strict."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polymodal.errors import CheckpointError, ConfigError
from polymodal.models import efficientnet as eff
from polymodal.models.base import build
from polymodal.models.efficientnet import (PRETRAINED_MEAN, PRETRAINED_SIZE, PRETRAINED_STD, EfficientNetLite0,
                                           EfficientNetLite0Encoder, SameConv2d, imagenet_classes,
                                           load_package_state_dict)
from polymodal.registry import VISION

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}         # espresso, cup, coffee mug


def preprocess(array: np.ndarray) -> torch.Tensor:
    """Resize the shorter side to 256 (bicubic), centre-crop 224, normalise: (H, W, 3) uint8 -> (1, 3, 224, 224)."""
    img = Image.fromarray(array)
    scale = 256 / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    left, top = (img.width - PRETRAINED_SIZE) // 2, (img.height - PRETRAINED_SIZE) // 2
    img = img.crop((left, top, left + PRETRAINED_SIZE, top + PRETRAINED_SIZE))
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255.0  # (3, 224, 224)
    mean, std = torch.tensor(PRETRAINED_MEAN)[:, None, None], torch.tensor(PRETRAINED_STD)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLite0Encoder:
    return build(VISION, {"type": "efficientnet_lite0"}, "vision").eval()


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(eff.package_weights_path(), map_location="cpu", weights_only=True)


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert (names[281], names[282], names[285]) == ("tabby", "tiger cat", "Egyptian cat")
    assert (names[504], names[967], names[968]) == ("coffee mug", "espresso", "cup")


def test_pretrained_weights_classify_real_photos(encoder):
    x = torch.cat([preprocess(skimage_data.chelsea()), preprocess(skimage_data.coffee())])  # (2, 3, 224, 224)
    with torch.no_grad():
        probs = encoder.imagenet_logits(x).softmax(-1)  # (2, 1000)
    cat, coffee = probs
    assert int(cat.argmax()) in CAT_CLASSES
    assert float(cat[sorted(CAT_CLASSES)].sum()) > 0.8  # measured 0.91
    assert int(coffee.argmax()) in COFFEE_CLASSES
    assert float(coffee[sorted(COFFEE_CLASSES)].sum()) > 0.8  # measured 0.97 (espresso 0.95)


def test_loader_rejects_wrong_shape_naming_the_key(package_state):
    state = dict(package_state)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # the file has 5x5 here
    with pytest.raises(CheckpointError, match=r"_blocks\.3\._depthwise_conv\.weight.*\(144, 1, 3, 3\).*\(144, 1, 5, 5\)"):
        load_package_state_dict(EfficientNetLite0(), state)


def test_loader_rejects_missing_and_unexpected_keys(package_state):
    state = {k: v for k, v in package_state.items() if k != "_blocks.5._bn1.running_var"}
    with pytest.raises(CheckpointError, match=r"missing 1 .*_blocks\.5\._bn1\.running_var"):
        load_package_state_dict(EfficientNetLite0(), state)
    state = dict(package_state, **{"_blocks.0._expand_conv.weight": torch.zeros(32, 32, 1, 1)})  # block 0 has no expansion
    with pytest.raises(CheckpointError, match=r"unexpected key '_blocks\.0\._expand_conv\.weight'"):
        load_package_state_dict(EfficientNetLite0(), state)


def test_bad_weights_file_is_a_checkpoint_error_naming_file_and_key(package_state, tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save({k: v for k, v in package_state.items() if not k.startswith("_conv_head")}, path)
    with pytest.raises(CheckpointError, match=r"lite0\.pth.*'_conv_head\.weight'"):
        EfficientNetLite0Encoder(weights=str(path))
    with pytest.raises(CheckpointError, match="not found"):
        EfficientNetLite0Encoder(weights=str(tmp_path / "absent.pth"))


def test_without_imagenet_head_loads_features_only():
    enc = EfficientNetLite0Encoder(imagenet_head=False)
    assert not any(k.startswith("backbone.classifier") for k in enc.state_dict())
    with pytest.raises(RuntimeError, match="imagenet_head=False"):
        enc.imagenet_logits(torch.zeros(1, 3, 32, 32))


def test_features_shapes_and_pooling():
    enc = EfficientNetLite0Encoder(pretrained=False).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        f = enc(x)
    # stride 32 with TF "same" padding: ceil(64 / 32) x ceil(96 / 32) = 2 x 3 tokens
    assert f.tokens.shape == (2, 6, 1280) and enc.dim == 1280
    assert f.mask.dtype == torch.bool and f.mask.shape == (2, 6) and bool(f.mask.all())
    torch.testing.assert_close(f.pooled, f.tokens.mean(1))
    grid = enc.feature_map(x)  # (2, 1280, 2, 3), tokens are its row-major flattening
    torch.testing.assert_close(f.tokens[:, 4], grid[:, :, 1, 1])
    odd = EfficientNetLite0Encoder(pretrained=False, token_stage="last_block").eval()
    with torch.no_grad():
        f = odd(torch.randn(1, 3, 65, 33))
    assert f.tokens.shape == (1, 3 * 2, 320) and odd.dim == 320


def test_every_trainable_parameter_gets_a_gradient():
    # Seeded, and a batch large enough that drop-connect never drops a block for every sample.
    torch.manual_seed(0)
    enc = EfficientNetLite0Encoder(pretrained=False, drop_connect_rate=0.2).train()
    f = enc(torch.randn(8, 3, 64, 64))
    (f.tokens.pow(2).mean() + f.pooled.sum()).backward()
    trainable = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.classifier.weight", "backbone.classifier.bias"}  # unused by forward()
    no_grad = [n for n, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert no_grad == []


def test_export_spec_rebuilds_offline_and_reproduces_outputs(encoder, monkeypatch):
    spec = encoder.export_spec()
    assert spec["type"] == "efficientnet_lite0" and spec["pretrained"] is False and spec["weights"] is None

    def no_package_read():
        raise AssertionError("export_spec's rebuild read the package's weights file")

    monkeypatch.setattr(eff, "package_weights_path", no_package_read)
    rebuilt = build(VISION, spec, "vision").eval()
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a, b = encoder(x), rebuilt(x)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
        assert torch.equal(encoder.imagenet_logits(x), rebuilt.imagenet_logits(x))


def test_config_is_checked():
    with pytest.raises(ConfigError, match="token_stage"):
        build(VISION, {"type": "efficientnet_lite0", "pretrained": False, "token_stage": "middle"}, "vision")
    with pytest.raises(ConfigError, match="drop_rate"):
        build(VISION, {"type": "efficientnet_lite0", "drop_rate": 0.1}, "vision")


@pytest.mark.parametrize("size", [8, 9])
def test_same_padding_follows_tensorflow(size):
    conv = SameConv2d(2, 2, 5, stride=2, bias=False)
    x = torch.randn(1, 2, size, size)
    # TF "same": output ceil(size / 2); an odd total padding puts the extra pixel bottom/right
    total = max((-(-size // 2) - 1) * 2 + 5 - size, 0)
    expected = F.conv2d(F.pad(x, [total // 2, total - total // 2] * 2), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-1] == -(-size // 2)
