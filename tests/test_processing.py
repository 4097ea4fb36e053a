"""The processor: batched image pre-processing from any input kind, tokenisation, save/load."""
import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.errors import DataError
from polymodal.processing import ImageProcessor, Processor


def test_normalisation_is_exact(tmp_path):
    proc = ImageProcessor(image_size=4, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 255, 0, 51
    x = proc([arr])
    assert x.shape == (1, 3, 4, 4)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, -1.0, 0.2]))


def test_inputs_of_every_kind_agree(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    proc = ImageProcessor(image_size=16)
    x = proc([arr, Image.fromarray(arr), str(tmp_path / "a.png"), (tmp_path / "a.png").read_bytes()])
    for i in range(1, 4):
        torch.testing.assert_close(x[i], x[0], rtol=0, atol=0)


def test_modes_and_crop():
    proc = ImageProcessor(image_size=8, resize="crop")
    grey = Image.new("L", (30, 10), 128)
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent -> white background
    x = proc([grey, rgba])
    assert x.shape == (2, 3, 8, 8)
    white = ImageProcessor(image_size=8)([Image.new("RGB", (10, 10), (255, 255, 255))])
    torch.testing.assert_close(x[1], white[0])


def test_bad_image_is_a_clear_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.jpg: not an image file"):
        ImageProcessor(image_size=8)([str(tmp_path / "bad.jpg")])


def test_processor_save_and_reload(tmp_path):
    proc = Processor(image={"image_size": 32}, tokenizer="minilm", max_length=12)
    spec = proc.save(tmp_path)
    again = Processor.from_spec(spec, base_dir=tmp_path)
    texts = ["a red circle", "两个蓝色的正方形"]
    assert torch.equal(proc.tokenize(texts)["input_ids"], again.tokenize(texts)["input_ids"])
    assert again.image.image_size == 32 and again.max_length == 12
    assert proc.decode(proc.tokenize(["a red circle"])["input_ids"]) == ["a red circle"]


def test_trained_tokenizer_covers_chinese_and_round_trips(tmp_path):
    from polymodal.processing import train_tokenizer

    texts = ["A small red circle.", "Two blue squares left of a circle.", "一个小的红色圆形。", "两个蓝色的正方形。"] * 5
    proc = Processor(tokenizer=str(train_tokenizer(texts, tmp_path / "tok", vocab_size=200)))
    ids = proc.tokenize(["a small red circle.", "一个小的红色圆形。"])["input_ids"]
    assert proc.tokenizer.unk_token_id not in ids.tolist()[1]
    assert proc.decode(ids) == ["a small red circle.", "一个小的红色圆形。"]
    assert (proc.tokenizer.pad_token_id, proc.tokenizer.cls_token_id, proc.tokenizer.sep_token_id) == (0, 2, 3)
    assert len(proc.tokenizer) < 200


def test_texts_cut_at_max_length_are_warned_about_once(caplog):
    """A text longer than max_length is cut (as before) and says so, once per processor; texts
    that fit, even exactly, say nothing."""
    import logging

    proc = Processor(tokenizer="minilm", max_length=6)
    with caplog.at_level(logging.WARNING, logger="polymodal.processing"):
        fit = proc.tokenize(["a red circle", "one two three four"])    # 4 and 6 tokens with [CLS]/[SEP]
        assert not caplog.records and fit["input_ids"].shape[1] == 6
        cut = proc.tokenize(["a red circle and a blue square and a green cross"])
        assert cut["input_ids"].shape[1] == 6
        assert len(caplog.records) == 1 and "max_length=6" in caplog.text and "1 of 1" in caplog.text
        proc.tokenize(["a red circle and a blue square and a green cross"])
        assert len(caplog.records) == 1
