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


# ------------------------------------------------------------------ data quality (docs/data-quality.md)

class _Bar:
    """A rich progress bar on stderr (records done / total, rate, ETA); off with --no-progress."""

    def __init__(self, label: str, total: Optional[int], show: bool):
        self.bar = None
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _load_model(src: Optional[str]):
    if src is None:
        return None
    from polymodal.infer.loaded import load

    return load(src)


def _table(rows: list[tuple], header: tuple) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return ["  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in (header, *rows)]


@app.command()
def score(
    spec: str = typer.Argument(..., help="dataset spec, e.g. jsonl:data/train.jsonl or shapes:DIR:captions:train"),
    out: Path = typer.Option(..., "--out", help="scores file to write (JSON Lines, one row per record)"),
    model: Optional[str] = typer.Option(None, "--model", help="checkpoint dir or recipe that scores the pairs: image/text "
                                        "embeddings (cosine) and ITM head, or an encoder-decoder captioner's "
                                        "likelihood (caption_logprob); without it only the checks run"),
    split: Optional[str] = typer.Option(None, "--split"),
    lang: Optional[str] = typer.Option(None, "--lang", help="expected language of the texts: en, zh (others are a problem)"),
    min_side: int = typer.Option(16, "--min-side", min=1, help="images with a side under this many pixels are a problem"),
    max_aspect: float = typer.Option(3.0, "--max-aspect", min=1.0, help="longer side / shorter side above this is a problem"),
    max_words: int = typer.Option(77, "--max-words", min=1, help="texts longer than this are a problem"),
    itm: bool = typer.Option(True, "--itm/--no-itm", help="also the ITM probability, when the model has an ITM head"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="records decoded and embedded together"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Score every image-text pair: alignment (cosine, ITM, or a captioner's likelihood) and checks (decodes, size, aspect, text)."""
    from polymodal.data.quality import score as run, spec_size

    loaded = _load_model(model)
    with _Bar("score", spec_size(spec, split), progress) as bar:
        report = run(spec, loaded, out=out, split=split, batch_size=batch_size, lang=lang, min_side=min_side,
                     max_aspect=max_aspect, max_words=max_words, itm=itm, progress=bar)
    report["model"] = model
    lines = [f"scored {report['records']} records ({report['ok']} without problems) -> {out}"]
    if report["score"]:
        s = report["score"]
        lines.append(f"  cosine: min {s['min']}, median {s['median']}, max {s['max']}")
    if report.get("itm"):
        s = report["itm"]
        lines.append(f"  ITM probability: min {s['min']}, median {s['median']}, max {s['max']}")
    if report.get("caption_logprob"):
        s = report["caption_logprob"]
        lines.append(f"  captioner log-likelihood per token: min {s['min']}, median {s['median']}, max {s['max']}")
    if report["duplicate_texts"]:
        lines.append(f"  {report['duplicate_texts']} records repeat an earlier record's text")
    lines += _table(sorted(report["problems"].items(), key=lambda kv: -kv[1]), ("problem", "records")) \
        if report["problems"] else []
    _emit(report, as_json, "\n".join(lines))


@app.command("filter")
def filter_(
    spec: str = typer.Argument(..., help="dataset spec the scores were computed on"),
    scores: Path = typer.Option(..., "--scores", help="scores file from `polymodal data score`"),
    out: Path = typer.Option(..., "--out", help="new JSON Lines manifest to write (the original data are not touched)"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="drop records whose score is under this"),
    keep_top: Optional[float] = typer.Option(None, "--keep-top", help="keep this best-scoring fraction (0 < P <= 1)"),
    field: str = typer.Option("score", "--field", help="the scores file's column: score (cosine), itm or "
                                 "caption_logprob (a captioner's likelihood)"),
    dedup: Optional[Path] = typer.Option(None, "--dedup", help="a report from `polymodal data dedup --out`: "
                                         "also drop duplicates not kept and test leaks"),
    keep_problems: bool = typer.Option(False, "--keep-problems", help="keep records whose checks found problems"),
    split: Optional[str] = typer.Option(None, "--split"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Write a new manifest of the records that pass: score threshold, checks, duplicates."""
    from polymodal.data.quality import filter_spec, spec_size

    with _Bar("filter", spec_size(spec, split), progress) as bar:
        report = filter_spec(spec, scores, out, min_score=min_score, keep_top=keep_top, field=field, dedup=dedup,
                             split=split, keep_problems=keep_problems, progress=bar)
    lines = [f"kept {report['kept']} of {report['records']} records -> {report['out']} "
             f"(read it with jsonl:{report['out']}); {field} threshold {report['threshold']}",
             f"every dropped record and why: {report['report']}"]
    if report["reasons"]:
        kinds: dict[str, int] = {}   # "near duplicate of 1234" -> "near duplicate": one row per kind, not per group
        for reason, n in report["reasons"].items():
            kinds[reason.split(" of ")[0]] = kinds.get(reason.split(" of ")[0], 0) + n
        lines += _table(sorted(kinds.items(), key=lambda kv: -kv[1]), ("dropped because", "records"))
    _emit(report, as_json, "\n".join(lines))


@app.command()
def dedup(
    spec: str = typer.Argument(..., help="dataset spec to de-duplicate"),
    against: Optional[str] = typer.Option(None, "--against", help="a test spec: list the records that leak its items"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the full report (groups, links, leaks) as JSON"),
    model: Optional[str] = typer.Option(None, "--model", help="compare the model's image embeddings "
                                        "(default: a colour thumbnail, no model needed)"),
    hash_distance: int = typer.Option(-1, "--hash-distance", min=-1, max=64,
                                      help="near duplicates: pHash Hamming distance at most this (-1: off, the default)"),
    cosine: Optional[float] = typer.Option(None, "--cosine", help="near duplicates: embedding cosine at least this "
                                           "(default 0.95 for thumbnails, off with --model unless given; 2: off)"),
    aligned: float = typer.Option(0.97, "--aligned", help="near duplicates: greyscale cosine at the best shift "
                                  "within 4 pixels at least this (shifted copies; 2: off)"),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="also group records with the same normalised text"),
    index_min: int = typer.Option(5000, "--index-min", min=1, help="above this many records use a FAISS index "
                                  "(when faiss-cpu is installed) instead of comparing all pairs"),
    k: int = typer.Option(10, "--neighbours", min=1, help="neighbours per record looked at through the index"),
    split: Optional[str] = typer.Option(None, "--split"),
    against_split: Optional[str] = typer.Option(None, "--against-split"),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="records decoded and embedded together"),
    max_groups: int = typer.Option(10, "--max-groups", min=0, help="groups to print"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line (the summary; --out has everything)"),
):
    """Find exact duplicates, near-duplicate images and captions, and (--against) test leaks."""
    from polymodal.data.quality import find_duplicates, spec_size

    loaded = _load_model(model)
    total = spec_size(spec, split)
    if against is not None and total is not None:
        extra = spec_size(against, against_split)
        total = total + extra if extra is not None else None
    with _Bar("dedup", total, progress) as bar:
        report = find_duplicates(spec, against=against, split=split, against_split=against_split, model=loaded,
                                 hash_distance=None if hash_distance < 0 else hash_distance,
                                 cosine=None if cosine is not None and cosine > 1 else cosine,
                                 aligned=None if aligned > 1 else aligned,
                                 captions=captions, index_min=index_min, k=k, batch_size=batch_size, progress=bar)
    if cosine is not None and cosine > 1:
        report["thresholds"]["cosine"] = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    summary = {k_: v for k_, v in report.items() if k_ not in ("groups", "unreadable", "leaks")}
    summary.update(groups={kind: sum(g["kind"] == kind for g in report["groups"]) for kind in ("exact", "near", "caption")},
                   unreadable=len(report["unreadable"]), out=str(out) if out else None)
    if "leaks" in report:
        summary["leaks"] = len(report["leaks"])
    lines = [f"{report['records']} records, {len(report['unreadable'])} unreadable; "
             + ", ".join(f"{summary['groups'][kind]} {kind} groups ({report['duplicates'][kind]} records not kept)"
                         for kind in ("exact", "near", "caption"))]
    if report["method"]:
        lines.append("  search: " + ", ".join(f"{k_} {v}" for k_, v in report["method"].items()))
    shown = [g for g in report["groups"] if g["kind"] != "caption"][:max_groups]
    if shown:
        lines += _table([(g["kind"], g["kept"], ", ".join(m for m in g["members"] if m != g["kept"])[:80])
                         for g in shown], ("group", "kept", "duplicates (dropped by filter --dedup)"))
    if "leaks" in report:
        lines.append(f"{len(report['leaks'])} records leak an item of {against}")
        lines += _table([(x["id"], x["test_id"], x["kind"]) for x in report["leaks"][:max_groups]],
                        ("record", "test item", "how"))
    if out is not None:
        lines.append(f"full report: {out} (drop the duplicates with `polymodal data filter … --dedup {out}`)")
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def corrupt(
    spec: str = typer.Argument(..., help="a clean dataset spec with image files and captions"),
    out: Path = typer.Option(..., "--out", help="folder for noisy.jsonl, truth.json and the new image files"),
    swap: float = typer.Option(0.10, "--swap", help="fraction of records whose captions are swapped with another's"),
    duplicates: float = typer.Option(0.05, "--duplicates", help="fraction of records given an exact or near-duplicate copy"),
    broken: int = typer.Option(10, "--broken", min=0, help="records with a broken image file to add"),
    seed: int = typer.Option(0, "--seed"),
    split: Optional[str] = typer.Option(None, "--split"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Inject known noise (swapped captions, duplicates, broken files) to measure the detectors."""
    from polymodal.data.quality import corrupt as run

    report = run(spec, out, swap=swap, duplicates=duplicates, broken=broken, seed=seed, split=split)
    _emit(report, as_json, f"wrote {report['records']} records ({report['swapped']} with swapped captions, "
                           f"{report['duplicates']} duplicate copies, {report['broken']} broken files) to "
                           f"{report['spec']}; ground truth in {report['truth']}")


@app.command("measure-quality")
def measure_quality(
    truth: Path = typer.Argument(..., help="truth.json written by `polymodal data corrupt`"),
    scores: Optional[Path] = typer.Option(None, "--scores", help="scores file of the noisy manifest"),
    dedup: Optional[Path] = typer.Option(None, "--dedup", help="dedup report of the noisy manifest"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="threshold under which a pair counts as swapped"),
    field: str = typer.Option("score", "--field", help="the scores file's column: score (cosine), itm or "
                              "caption_logprob"),
    pick: bool = typer.Option(False, "--pick-threshold", help="choose the --min-score that maximises F1 here "
                              "(do it on a noisy val split, then pass that value for the other splits)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON line"),
):
    """Precision and recall of each detector against the ground truth of `polymodal data corrupt`."""
    from polymodal.data.quality import measure, pick_threshold

    if pick:
        if scores is None:
            raise ConfigError("--pick-threshold needs --scores")
        min_score = pick_threshold(truth, scores, field)["min_score"]
    report = measure(truth, scores, dedup, min_score=min_score, field=field)
    rows = [(k_, v["precision"], v["recall"], v["flagged"], v["true"]) for k_, v in report.items() if "precision" in v]
    lines = _table(rows, ("detector", "precision", "recall", "flagged", "true"))
    if "swapped" in report:
        lines.append(f"  swapped: {field} under {report['swapped']['min_score']}")
    if "per_transform" in report:
        lines.append("  copies found: " + ", ".join(f"{k_} {v['found']}/{v['copies']}"
                                                    for k_, v in report["per_transform"].items()))
    _emit(report, as_json, "\n".join(lines))
