"""Tiny synthetic image-text data for the trainer tests, and a collator making the batch keys of
docs/training.md from plain records (the data module's collators do this for real datasets).

Records: {"image": uint8 array, "image_id": int, "colour": str, "text": encoder text,
"target": decoder text, "label": int}. Images are solid colours with a little noise, so held-out
records (other noise, other seeds) test generalisation rather than memory.
"""
from __future__ import annotations

import numpy as np
import torch

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "white": (240, 240, 240), "black": (15, 15, 15)}
NAMES = list(COLOURS)
VQA_ANSWERS = NAMES + ["yes", "no"]
FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "white": "blanc", "black": "noir"}


def image(colour: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    base = np.array(COLOURS[colour], dtype=np.int16)
    noise = rng.integers(-25, 26, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def records(task: str, n: int, seed: int = 0, size: int = 32, ids_by_colour: bool = False) -> list[dict]:
    """`n` records for `task` with random colours.

    Args:
        ids_by_colour: give every image of one colour the same `image_id` (they share their
            caption, so contrastive objectives must not treat them as negatives).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = NAMES[int(rng.integers(len(NAMES)))]
        r = {"image": image(c, rng, size), "colour": c,
             "image_id": NAMES.index(c) if ids_by_colour else seed * 100_000 + i}
        if task in ("retrieval", "pretrain", "captioning"):
            r["text"] = r["target"] = f"a {c} image"
        elif task == "vqa":
            # Half "what colour is it?" (the image answers), half "is it X?" with X the true colour
            # half the time (image and question together answer).
            if rng.random() < 0.5:
                r["text"], r["target"] = "what colour is it?", c
            else:
                asked = c if rng.random() < 0.5 else NAMES[int(rng.integers(len(NAMES)))]
                r["text"], r["target"] = f"is it {asked}?", "yes" if asked == c else "no"
            r["label"] = VQA_ANSWERS.index(r["target"])
        elif task == "classification":
            # the statement is true iff the named colour is the image's colour
            said = c if rng.random() < 0.5 else NAMES[int(rng.integers(len(NAMES)))]
            r["text"] = f"the image is {said}"
            r["label"] = int(said == c)
        elif task == "translation":
            # the source leaves the colour out ("a thing"); the image supplies it
            r["text"] = "a colourful thing"
            r["target"] = f"une chose {FRENCH[c]}"
        out.append(r)
    return out


def collator(processor):
    """records -> batch with the trainer's batch keys."""

    def collate(recs: list[dict]) -> dict:
        batch = {"pixel_values": processor.process_images([r["image"] for r in recs]),
                 "image_ids": torch.tensor([r["image_id"] for r in recs])}
        if "text" in recs[0]:
            batch.update(processor.tokenize([r["text"] for r in recs]))
        if "target" in recs[0]:
            dec = processor.tokenize([r["target"] for r in recs])  # [CLS] ... [SEP] = BOS ... EOS
            batch["decoder_input_ids"], batch["decoder_attention_mask"] = dec["input_ids"], dec["attention_mask"]
        if "label" in recs[0]:
            batch["labels"] = torch.tensor([r["label"] for r in recs])
        return batch

    return collate


# Parts without dropout or BatchNorm: runs that should agree exactly (several processes vs one,
# accumulated vs one big batch) draw no per-process random masks and share no batch statistics.
VIT = {"type": "vit", "config": {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "intermediate_size": 128}}
BERT = {"type": "hf_text", "pretrained": None, "pool": "cls",
        "config": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 128, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
GPT = {"type": "gpt2", "config": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 32,
                                  "add_cross_attention": True, "bos_token_id": 101, "eos_token_id": 102,
                                  "pad_token_id": 0, "vocab_size": 30522, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                                  "attn_pdrop": 0.0}}
NO_DROPOUT = {"lm": ("captioning", {"type": "encoder_decoder", "vision": VIT, "decoder": GPT}),
              "itc": ("retrieval", {"type": "dual_encoder", "vision": VIT, "text": BERT, "embed_dim": 32})}
PROCESSOR = {"image": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "tokenizer": "minilm", "max_length": 16}


def exact_config(name: str, out, batch_size: int, grad_accum: int = 1, steps: int = 6) -> dict:
    """A run of NO_DROPOUT[name] logging every step, for curves that must agree exactly."""
    task, spec = NO_DROPOUT[name]
    return {"task": task, "model": {"spec": spec, "processor": PROCESSOR},
            "optim": {"lr": 1e-3, "max_steps": steps, "batch_size": batch_size, "grad_accum": grad_accum,
                      "warmup_steps": 2},
            "checkpointing": {"every": 0}, "logging": {"every": 1, "progress": False, "plot": False},
            "output_dir": str(out), "precision": "no"}
