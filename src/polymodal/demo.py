"""`polymodal demo`: the whole story on the embedded shapes world, ending in an HTML report.

Stages (each skipped when its outputs exist, so a rerun resumes where it stopped):

  data        generate a shapes-world dataset                 polymodal data generate shapes
  tokenizer   fit a small EN+ZH WordPiece vocabulary          polymodal data tokenizer
  lm          pretrain a captioner on EN+ZH captions: LM      polymodal train configs/lm.yaml
  vqa         VQA on the LM stage's vision tower              polymodal train configs/vqa.yaml
  retrieval   ITC dual encoder on the LM stage's frozen tower  polymodal train configs/retrieval.yaml
  caption_en  the LM's decoder on the VQA stage's tower,      polymodal train configs/caption_en.yaml
              fine-tuned on English captions
  caption_zh  the same, on Chinese captions                   polymodal train configs/caption_zh.yaml
  ground      train a text-queried detector (boxes)           polymodal train configs/ground.yaml
  eval        test and compositional splits, real metrics     polymodal eval ... --baseline
  report      demo-out/report.html (self-contained)

Every stage runs through the same Python API as the commands it lists in the report, and the
run configs it trains with are written to OUT/configs/ so each stage can be rerun by hand.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from polymodal.report import write_report

log = logging.getLogger(__name__)


@dataclass
class Budget:
    """How much data and training: `full` takes 26 minutes on the slowest 2-core machine measured
    (docs/results.md, "The demo"), `quick` ~1 minute."""

    n_images: int
    lm_steps: int
    retrieval_steps: int
    caption_steps: int
    vqa_steps: int
    eval_limit: int | None   # records per evaluation (None: the whole split)
    dim: int = 128
    batch_size: int = 64
    ground_steps: int = 150   # the text-queried detector's own training (~30 s at the full budget)


BUDGETS = {
    # caption_steps 400: at 200 the Chinese captioner bound colours to the wrong shapes (val CHAIR-i
    # 0.233, recall 0.62); 300 -> 0.063 / 0.82, 400 -> 0.023 / 0.89; English recall 0.83 -> 0.91
    # (docs/results.md, "The demo")
    "full": Budget(n_images=4000, lm_steps=320, retrieval_steps=600,
                   caption_steps=400, vqa_steps=1350, eval_limit=None),
    "quick": Budget(n_images=600, lm_steps=12, retrieval_steps=12,
                    caption_steps=6, vqa_steps=16, eval_limit=40,
                    dim=64, batch_size=32, ground_steps=6),
}


def _towers(b: Budget) -> dict:
    """The vision and text towers every demo model shares (so pretrained weights carry over).

    The conv grid's tokens carry their (x, y) place (`Features.positions`), which the VQA
    model's hops read. CoordConv inputs (`coords: true`) cost the captioner at this budget
    (docs/results.md: LM validation loss 0.585 vs 0.529 from scratch), so the demo leaves them off.
    The colour-blind stream (`colorblind`) is what the shape and size heads read: colour-shape
    pairs never seen in training are read as the seen ones (docs/results.md, "The compositional
    split": VQA comp 0.830 -> 0.939, shapes of held-out pairs read 0.655 -> 0.955).
    """
    return {"vision": {"type": "conv_stem", "dim": b.dim, "depth": 3, "width": 32, "colorblind": 64},
            "text": {"type": "bert", "hidden_size": b.dim, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 64}}


def _object_attributes() -> dict[str, list[str]]:
    """The attributes every image token learns to name (object-level supervision of the vision
    tower from the shapes world's exact objects: the `object_attributes` objective)."""
    from polymodal.data import shapes

    return {"color": list(shapes.COLORS), "shape": list(shapes.SHAPES), "size": list(shapes.SIZES)}


def _configs(out: Path, b: Budget) -> dict[str, dict]:
    """The run configs of the training stages (written to OUT/configs/NAME.yaml)."""
    data, tok, runs = str(out / "data"), str(out / "tokenizer"), out / "runs"
    # max_length 64: a Chinese caption of six objects is 62 tokens (one a character); at 48, one
    # caption in five was cut and the Chinese captioner learnt to stop mid-list
    proc = {"tokenizer": tok, "image": {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "max_length": 64}
    towers, objects = _towers(b), _object_attributes()
    decoder = {"type": "gpt2", "n_embd": b.dim, "n_layer": 2, "n_head": 4, "n_positions": 64}
    common = {"precision": "auto", "seed": 0,
              "logging": {"every": 10, "progress": True, "plot": True, "tensorboard": False}}

    def optim(steps, lr, batch_size=b.batch_size):
        return {"lr": lr, "max_steps": steps, "batch_size": batch_size, "warmup_steps": max(1, steps // 20),
                "weight_decay": 0.01}

    # recolor: half the images seen again with their hues rotated, for the shape and size heads
    # (docs/results.md, "The compositional split"). Not in the LM stage: there it cost the
    # retrieval stage, which keeps that tower frozen (R@1 0.78 / 0.74 -> 0.66 / 0.70 re-ranked)
    caption_objectives = [{"type": "lm"}, {"type": "object_attributes", "recolor": 0.5}]
    lm_objectives = [{"type": "lm"}, {"type": "object_attributes"}]

    def ckpt(metric, mode):
        return {"every": 0, "keep_last": 1, "best_metric": metric, "mode": mode}

    vqa_best = str(runs / "vqa" / "best")
    tower_from_vqa = {"init_from": str(runs / "lm" / "best"), "init_parts": {"vision": vqa_best, "object_heads": vqa_best}}

    return {
        # the captioner's tower learns to name the object centred on each token (object_attributes);
        # the decoder reads the tower's tokens only: with attribute_tokens as well, the decoder took
        # up what the heads name in two LM runs of five and captioned worse in the other three
        # (docs/results.md). It starts from scratch: starting from an alignment model (ITC + ITM +
        # MLM, 100 steps: a stage of its own until this run) left the captions where they were
        # (docs/results.md: CHAIR-i 0.118 from scratch against 0.120)
        "lm": {**common, "task": "captioning", "output_dir": str(runs / "lm"),
               "model": {"spec": {"type": "encoder_decoder", "vision": towers["vision"], "decoder": decoder,
                                  "object_attributes": objects},
                         "processor": proc},
               "objectives": lm_objectives,
               "data": {"train": data, "val": data, "max_val_samples": 256, "text_field": "captions+captions_zh"},
               "optim": optim(b.lm_steps, 1e-3), "checkpointing": ckpt("val/lm/loss", "min")},
        # retrieval: the LM stage's tower and object heads, frozen (their features computed once an
        # image: model.feature_cache_gb), pooled per object (`image_pool: set`), against a text
        # tower trained by ITC (docs/results.md: i->t R@1 0.58 where an alignment model had 0.03)
        "retrieval": {**common, "task": "retrieval", "output_dir": str(runs / "retrieval"),
                      "model": {"spec": {"type": "dual_encoder", **towers, "embed_dim": b.dim,
                                         "object_attributes": objects, "image_pool": "set"},
                                "processor": proc, "init_from": str(runs / "lm" / "best"),
                                "freeze": ["vision", "object_heads"]},
                      "objectives": [{"type": "itc"}],
                      "data": {"train": data, "val": data, "max_val_samples": 256, "text_field": "captions"},
                      "optim": optim(b.retrieval_steps, 1e-3), "checkpointing": ckpt("val/itc/loss", "min")},
        # the captioners: the LM stage's decoder on the VQA stage's vision tower and object heads,
        # which read the objects far better after its 1,350 steps of object-level supervision
        # (docs/results.md: CHAIR-i 0.118 -> 0.022 with the LM stage's own tower swapped out).
        # Half the images a step, each with two of its captions (the tower runs once for both):
        # the same captions a step at ~0.6x the time. Keeping that tower frozen (its features
        # cached) halved the time again but doubled the hallucinations on the compositional split
        # (docs/results.md, "The demo's time": English comp CHAIR-i 0.19 against 0.12)
        "caption_en": {**common, "task": "captioning", "output_dir": str(runs / "caption_en"),
                       "model": tower_from_vqa, "objectives": caption_objectives,
                       "data": {"train": data, "val": data, "max_val_samples": 256, "text_field": "captions",
                                "captions_per_image": 2},
                       "optim": optim(b.caption_steps, 5e-4, b.batch_size // 2),
                       "checkpointing": ckpt("val/lm/loss", "min")},
        "caption_zh": {**common, "task": "captioning", "output_dir": str(runs / "caption_zh"),
                       "model": tower_from_vqa, "objectives": caption_objectives,
                       "data": {"train": data, "val": data, "max_val_samples": 256, "text_field": "captions_zh",
                                "captions_per_image": 2},
                       "optim": optim(b.caption_steps, 5e-4, b.batch_size // 2),
                       "checkpointing": ckpt("val/lm/loss", "min")},
        # question-guided hops over the grid's tokens and their places, each hop supervised with
        # the objects its phrase names, each token with the object centred on it; the hops see
        # what the object heads read on each token (attribute_tokens). It starts from the LM
        # stage's vision tower and object heads, which already name the objects (docs/results.md:
        # at step 400 train accuracy 0.55 against 0.42 from the alignment tower, hops 0.79 vs 0.60).
        # `compare`: the question's words x what the hops found (places, count, the heads' reads),
        # which learns relation and size questions (0.50 / 0.54 -> 0.99 / 0.99 on test)
        "vqa": {**common, "task": "vqa", "output_dir": str(runs / "vqa"),
                "model": {"spec": {"type": "fusion_encoder", **towers,
                                   "fusion": {"type": "hop_attention", "dim": b.dim, "hops": 2, "compare": True,
                                              "attribute_match": True},
                                   "object_attributes": objects, "attribute_tokens": True},
                          "processor": proc, "init_from": str(runs / "lm" / "best")},
                "objectives": [{"type": "vqa_classification"}, {"type": "hop_attention"},
                               {"type": "object_attributes", "recolor": 0.5}],
                "data": {"train": data, "val": data, "max_val_samples": 512, "group_by_image": True},
                "optim": optim(b.vqa_steps, 2e-3),
                "checkpointing": ckpt("val/vqa_classification/acc", "max")},
        **_ground_configs(out, b, common, proc),
    }


# ------------------------------------------------------------------------------------- stages
@dataclass
class Stage:
    name: str
    title: str
    commands: list[str]
    done: Callable[[], bool]
    run: Callable[[], None]


def _train_stage(out: Path, name: str, cfg: dict, title: str) -> Stage:
    from polymodal.train import train

    path = out / "configs" / f"{name}.yaml"
    run_dir = Path(cfg["output_dir"])

    def run():
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run of an earlier demo
        train(str(path))

    return Stage(name, title, [f"polymodal train {path}"], lambda: (run_dir / "best" / "model.safetensors").is_file(),
                 run)


def _stages(out: Path, budget: Budget, mode: str) -> list[Stage]:
    data, tok = out / "data", out / "tokenizer"
    configs = _configs(out, budget)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        (out / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))

    def gen():
        from polymodal.data import shapes

        shapes.generate(data, n=budget.n_images, seed=0, overwrite=True)

    specs = [f"shapes:{data}:{t}" for t in ("captions", "vqa", "classify", "translate")]

    def fit_tokenizer():
        from polymodal.data.tools import fit_tokenizer

        fit_tokenizer(specs, tok, split="train", vocab_size=2000)

    stages = [
        Stage("data", "Generate the shapes world", [f"polymodal data generate shapes --out {data} "
                                                    f"--n {budget.n_images} --seed 0"],
              lambda: (data / "meta.json").is_file(), gen),
        Stage("tokenizer", "Fit an English + Chinese vocabulary",
              [f"polymodal data tokenizer {' '.join(specs)} --out {tok} --vocab-size 2000"],
              lambda: (tok / "tokenizer.json").is_file(), fit_tokenizer),
        _train_stage(out, "lm", configs["lm"], "Pretrain: captioning LM on English + Chinese captions"),
        _train_stage(out, "vqa", configs["vqa"], "Fine-tune: visual question answering"),
        _train_stage(out, "retrieval", configs["retrieval"], "Fine-tune: image-text retrieval (ITC)"),
        _train_stage(out, "caption_en", configs["caption_en"], "Fine-tune: English captioning"),
        _train_stage(out, "caption_zh", configs["caption_zh"], "Fine-tune: Chinese captioning"),
        _train_stage(out, "ground", configs["ground"], "Train: grounding and text-queried detection"),
    ]
    evals = _evaluations(out, budget)
    stages.append(Stage("eval", "Evaluate on the test and compositional splits", [e["command"] for e in evals],
                        lambda: all(Path(e["out"]).is_file() for e in evals), lambda: _run_evals(evals)))
    stages.append(Stage("report", "Write the report", [f"polymodal demo --out {out}" + (" --quick" if mode == "quick" else "")],
                        lambda: False, lambda: None))
    return stages


# `polymodal eval` flags of the evaluations' settings
_FLAGS = {"num_beams": "beams", "max_new_tokens": "max-tokens", "repetition_penalty": "repetition-penalty",
          "rerank": "rerank", "rerank_k": "rerank-k"}
#: caption generation in the evaluation and the report: long enough for six objects (English
#: <= 32 tokens, Chinese <= 62) within the decoder's 64 positions; English with a repetition
#: penalty of 1.3, chosen on the val split (docs/results.md: object recall +1.4 points, CHAIR-i equal)
CAPTION_GENERATION = {"en": {"num_beams": 3, "max_new_tokens": 40, "repetition_penalty": 1.3},
                      "zh": {"num_beams": 3, "max_new_tokens": 62}}
RERANK_K = 8    # retrieval candidates per query the captioner re-scores (chosen on the val split: docs/results.md)


def _evaluations(out: Path, b: Budget) -> list[dict]:
    data, runs, m = out / "data", out / "runs", out / "metrics"
    limit = f" --limit {b.eval_limit}" if b.eval_limit else ""
    items = []
    for split in ("test", "comp"):
        items += [
            dict(task="vqa", model=runs / "vqa" / "best", split=split, lang="en", gen={}),
            dict(task="captioning", model=runs / "caption_en" / "best", split=split, lang="en",
                 gen=CAPTION_GENERATION["en"]),
            dict(task="captioning", model=runs / "caption_zh" / "best", split=split, lang="zh",
                 gen=CAPTION_GENERATION["zh"]),
            # the dual encoder's top candidates re-ranked by the English captioner (ALBEF / BLIP's
            # protocol, with the captioner's likelihood in place of an ITM head)
            dict(task="retrieval", model=runs / "retrieval" / "best", split=split, lang="en",
                 gen={"rerank": str(runs / "caption_en" / "best"), "rerank_k": RERANK_K}),
        ]
    items += _ground_evaluations(runs)
    for it in items:
        tag = "caption_" + it["lang"] if it["task"] == "captioning" else it["task"]
        it["out"] = str(m / f"{tag}_{it['split']}.json")
        gen = "".join(f" --{_FLAGS[k]} {v}" for k, v in it["gen"].items())
        it["command"] = (f"polymodal eval --model {it['model']} --data {data} --task {it['task']} --split {it['split']}"
                         f" --lang {it['lang']}{gen}{limit} --baseline --out {it['out']}")
        it["limit"] = b.eval_limit
    return items


def _ground_configs(out: Path, b: Budget, common: dict, proc: dict) -> dict[str, dict]:
    """The text-queried detector's run config: its own towers (a position-aware grid: CoordConv +
    (x, y) embeddings, every token naming the object centred on it), referring expressions and
    detection phrases trained together (configs/shapes/grounding.yaml is the full recipe)."""
    data, runs = out / "data", out / "runs"
    towers = _towers(b)
    files = {s: {"format": "jsonl", "path": [str(data / f"ground_{s}.jsonl"), str(data / f"detect_{s}.jsonl")]}
             for s in ("train", "val")}
    return {"ground": {**common, "task": "detection", "output_dir": str(runs / "ground"),
                       "model": {"spec": {"type": "text_detector", "vision": {**towers["vision"], "coords": True},
                                          "text": towers["text"], "dim": b.dim, "layers": 2, "heads": 4,
                                          "object_attributes": _object_attributes(), "attribute_tokens": True},
                                 "processor": proc},
                       "objectives": [{"type": "set_matching"}, {"type": "object_attributes"}],
                       "data": {"train": files["train"], "val": files["val"], "max_val_samples": 256,
                                "group_by_image": True},
                       "optim": {"lr": 1e-3, "max_steps": b.ground_steps, "batch_size": b.batch_size,
                                 "warmup_steps": max(1, b.ground_steps // 20), "weight_decay": 0.01},
                       "checkpointing": {"every": 0, "keep_last": 1, "best_metric": "val/set_matching/top1",
                                         "mode": "max"}}}


def _ground_evaluations(runs: Path) -> list[dict]:
    # the test split only: the recipe (docs/results.md) reports the compositional split
    return [dict(task=task, model=runs / "ground" / "best", split="test", lang="en", gen={})
            for task in ("grounding", "detection")]


def _run_evals(evals: list[dict]) -> None:
    from polymodal.eval.run import evaluate, finite

    for e in evals:
        res = evaluate(e["task"], str(Path(e["out"]).parents[1] / "data"), model=str(e["model"]), split=e["split"],
                       limit=e["limit"], lang=e["lang"], baseline=True, **e["gen"])
        res["model"] = str(e["model"])
        Path(e["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(e["out"]).write_text(json.dumps(finite(res), indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------- driver
def run_demo(out: str | Path = "demo-out", quick: bool = False, redo: bool = False, console=None) -> Path:
    """Run every stage not yet done in `out`, then write `out/report.html`; returns its path.

    Args:
        out: the output directory (reused: finished stages are skipped).
        quick: the ~1-minute version (tiny data and budgets), used by the tests.
        redo: run every stage again, even finished ones.
    """
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    mode = "quick" if quick else "full"
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = BUDGETS[mode]
    marker = out / "demo.json"
    state = json.loads(marker.read_text()) if marker.is_file() else {}
    if state.get("mode") not in (None, mode):
        redo = True  # the other budget's outputs do not belong in this report
    state["mode"] = mode
    timings = {} if redo else state.get("timings", {})
    stages = _stages(out, budget, mode)
    if redo:
        import shutil

        for sub in ("data", "tokenizer", "runs", "metrics"):
            shutil.rmtree(out / sub, ignore_errors=True)
    for i, stage in enumerate(stages, 1):
        head = f"[bold]{i}/{len(stages)} {stage.title}[/bold]"
        if stage.name != "report" and stage.done():
            console.print(f"{head} — done already ({timings.get(stage.name, 0):.0f} s earlier), skipped")
            continue
        commands = "\n  $ ".join(stage.commands[:2]) + (" …" if len(stage.commands) > 2 else "")
        console.print(f"{head}\n  $ " + escape(commands))   # paths are text, not rich markup
        t0 = time.perf_counter()
        if stage.name == "report":
            path = write_report(out, stages, timings, mode)
        else:
            stage.run()
        timings[stage.name] = round(time.perf_counter() - t0, 1)
        state["timings"] = timings
        marker.write_text(json.dumps(state, indent=2))
    console.print(f"[green]report: {escape(str(path))}[/green]")
    return path
