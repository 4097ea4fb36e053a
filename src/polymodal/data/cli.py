"""`polymodal data …`: generate, validate, stats, shard. A thin layer over polymodal.data.

Mounted by the main CLI as `polymodal data`; `--json` prints JSON lines on stdout. A
PolymodalError raised here becomes `error: …` and exit code 2 (polymodal.console).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from polymodal.console import EXIT_ITEMS_FAILED, GuardedGroup
from polymodal.errors import ConfigError

app = typer.Typer(cls=GuardedGroup, help="Generate, check, summarise and shard datasets.", no_args_is_help=True,
                  add_completion=False)


def _emit(obj: dict, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False) if as_json else text)


@app.command()
def generate(
    kind: str = typer.Argument("shapes", help="generator: shapes (the shapes world)"),
    out: Path = typer.Option(..., "--out", help="directory to write"),
    n: int = typer.Option(1000, "--n", min=1, help="number of images over all splits"),
    seed: int = typer.Option(0, "--seed", help="dataset seed (image i depends on seed and i only)"),
    size: int = typer.Option(64, "--size", help="canvas side in pixels (up to 224 usual)"),
    split: str = typer.Option("train=0.8,val=0.05,test=0.1,comp=0.05", "--split",
                              help="NAME=FRACTION or NAME=COUNT, comma separated; `comp` is the compositional split"),
    noise: float = typer.Option(6.0, "--noise", min=0.0, help="pixel noise standard deviation (0 = clean)"),
    min_objects: int = typer.Option(1, "--min-objects"),
    max_objects: int = typer.Option(6, "--max-objects"),
    workers: int = typer.Option(0, "--workers", min=0, help="rendering processes, 0 = one per core (same output for any number)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier shapes output in --out"),
    preview: Optional[Path] = typer.Option(None, "--preview", help="also save a PNG grid of a few scenes"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Generate a synthetic dataset (the shapes world) in all formats the readers take."""
    from polymodal.data import shapes

    if kind != "shapes":
        raise ConfigError(f"unknown generator {kind!r}; available: shapes")
    t0 = time.perf_counter()
    meta = shapes.generate(out, n=n, seed=seed, size=size, splits=split, noise=noise, workers=workers,
                           min_objects=min_objects, max_objects=max_objects, overwrite=overwrite)
    if preview is not None:
        shapes.preview(preview, seed=seed, size=size)
    seconds = round(time.perf_counter() - t0, 2)
    summary = {"out": str(out), "n": meta["n"], "size": size, "seed": seed, "splits": meta["splits"],
               "records": meta["counts"], "seconds": seconds}
    lines = [f"wrote {meta['n']} images ({size}px, seed {seed}) to {out} in {seconds}s"]
    for name, counts in meta["counts"].items():
        lines.append(f"  {name:6s} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append(f"read it with e.g. shapes:{out}:vqa:train, jsonl:{out}/captions_train.jsonl, "
                 f"coco:{out}/dataset_shapes.json:test")
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def validate(
    spec: str = typer.Argument(..., help="dataset spec, e.g. jsonl:data/train.jsonl or a YAML file"),
    split: Optional[str] = typer.Option(None, "--split"),
    task: Optional[str] = typer.Option(None, "--task", help="also require this task's fields "
                                       "(pretrain, captioning, vqa, classification, translation, grounding)"),
    decode: bool = typer.Option(True, "--decode/--no-decode", help="decode every image (else only check files exist)"),
    max_errors: int = typer.Option(10, "--max-errors", min=0, help="offending records to list"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Check every record: missing or unreadable images, empty text, bad fields. Exit 1 if any is bad."""
    from polymodal.data.tools import validate as run
    from polymodal.tasks import get_task

    report = run(spec, split=split, task=get_task(task) if task else None, decode=decode, max_errors=max_errors)
    lines = [f"{report['spec']}: {report['records']} records, {report['ok']} ok, {report['bad']} bad "
             f"({report['images']} images checked)"]
    lines += [f"  {k}: {v}" for k, v in report["problems"].items()]
    if report["first"]:
        lines.append("first offending records:")
        lines += [f"  {p['where']}: {p['problem']}" for p in report["first"]]
    _emit(report, as_json, "\n".join(lines))
    if report["bad"]:
        raise typer.Exit(EXIT_ITEMS_FAILED)


@app.command()
def stats(
    spec: str = typer.Argument(..., help="dataset spec"),
    split: Optional[str] = typer.Option(None, "--split"),
    max_images: int = typer.Option(1000, "--max-images", min=0, help="images opened (headers) for the size summary"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Summarise a dataset: counts, image sizes, text lengths, answer and label distributions."""
    from polymodal.data.tools import stats as run

    report = run(spec, split=split, max_images=max_images)
    lines = [f"{report['spec']}: {report['records']} records, {report['images']} images"
             + (f", {report['unreadable']} unreadable" if report["unreadable"] else "")]
    if "image_size" in report:
        w, h = report["image_size"]["width"], report["image_size"]["height"]
        lines.append(f"  image size: width {w['min']}-{w['max']} (median {w['median']}), "
                     f"height {h['min']}-{h['max']} (median {h['median']})")
    for field, s in report.get("text_words", {}).items():
        lines.append(f"  {field} length (words): {s['min']}-{s['max']}, mean {s['mean']}")
    for key in ("question_type", "answer_type", "answers", "label"):
        if key in report:
            top = ", ".join(f"{k} {v}" for k, v in list(report[key]["top"].items())[:10])
            lines.append(f"  {key} ({report[key]['distinct']} distinct): {top}")
    _emit(report, as_json, "\n".join(lines))


@app.command()
def shard(
    spec: str = typer.Argument(..., help="dataset spec"),
    out: Path = typer.Option(..., "--out", help="folder for the shards"),
    split: Optional[str] = typer.Option(None, "--split"),
    maxcount: int = typer.Option(1000, "--maxcount", min=1, help="records per shard"),
    maxsize: int = typer.Option(1 << 30, "--maxsize", min=1, help="bytes per shard (about)"),
    prefix: str = typer.Option("shards", "--prefix", help="shard file name prefix"),
    shuffle_seed: Optional[int] = typer.Option(None, "--shuffle-seed", help="shuffle records before writing"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Write a dataset as WebDataset .tar shards, to stream data larger than memory or disk."""
    from polymodal.data.tools import shard as run

    report = run(spec, out, split=split, maxcount=maxcount, maxsize=maxsize, prefix=prefix,
                 shuffle_seed=shuffle_seed)
    text = (f"wrote {report['records']} records in {len(report['shards'])} shard(s)"
            + (f", skipped {report['skipped']}" if report["skipped"] else "") + f"; read them with {report['spec']}")
    _emit(report, as_json, text)


@app.command()
def tokenizer(
    specs: list[str] = typer.Argument(..., help="dataset specs whose texts the vocabulary is fitted to"),
    out: Path = typer.Option(..., "--out", help="folder for the tokenizer files"),
    split: str = typer.Option("train", "--split"),
    vocab_size: int = typer.Option(2000, "--vocab-size", min=1, help="upper bound of the vocabulary"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Fit a small WordPiece tokenizer to a dataset's texts (English and Chinese alike).

    Use it with `model.processor.tokenizer: FOLDER` in a training config: text towers and
    decoders trained from scratch are sized to it, and the LM head shrinks from 30k to its size.
    """
    from polymodal.data.tools import fit_tokenizer

    report = fit_tokenizer(specs, out, split=split, vocab_size=vocab_size)
    _emit(report, as_json, f"wrote a {report['vocab_size']}-token tokenizer fitted to {report['texts']} texts "
                           f"to {report['out']}")
