"""The `polymodal` command. A thin layer over the Python API (`polymodal.load`, data, train, eval):
it parses arguments, streams results (JSON lines with `--json`, a table otherwise) and turns
errors into clear messages and exit codes (polymodal.console: 0 fine, 1 some items failed,
2 the command could not run; docs/errors.md)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from polymodal.console import EXIT_ITEMS_FAILED, GuardedGroup
from polymodal.errors import ConfigError, PolymodalError
from polymodal.infer.loaded import ZERO_SHOT_TEMPLATE

app = typer.Typer(cls=GuardedGroup, add_completion=False, no_args_is_help=True,
                  help="polymodal: multimodal (vision + language) Transformer models, offline and fast on CPU.")


def _emit(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    rows = [_printable(r) for r in rows]
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Captions, questions, file names and errors are data, not markup: "[red]" prints as written.
    table = Table(*columns)
    for r in rows:
        table.add_row(*(("[red]error: " + escape(r["error"])) if c == columns[-1] and "error" in r
                        else escape(_fmt(r.get(c, ""))) for c in columns))
    Console().print(table)


def _printable(row: dict) -> dict:
    """A row without its private keys (`_where`), every text writable as UTF-8: a lone surrogate
    from a user's input is shown as its escape (\\ud800) instead of failing the output."""
    def safe(v):
        return v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v

    return {k: safe(v) for k, v in row.items() if not k.startswith("_")}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x:.3f}" for k, x in sorted(v.items(), key=lambda kv: -kv[1])[:3])
    return str(v)


def _load(source: str, device: str, bf16: bool = False):
    import polymodal

    return polymodal.load(source, device=device, **({"bf16": True} if bf16 else {}))


def _run_items(items: list[dict], fn: Callable[[list, list], list], batch_size: int,
               text: str | None = None, image: str | None = "image") -> list[dict]:
    """Rows for `items`, in input order: `fn(images, items)` runs on a batch of items at a time,
    and returns one dict of results per item.

    Per-item failure: an item that arrives with an `error` (a bad request line), whose image
    cannot be read, whose `text` is not a usable text, or that fails when run alone gets an
    `error` naming it (its `_where`, "FILE:LINE", when it came from a file) and the others go on.
    A batch that fails is run again one item at a time, so one bad item never fails its
    neighbours. Images are decoded one batch at a time (memory: one batch, not the folder).

    Args:
        text: the key of the item's text to check (`question`, `text`), if any.
        image: the key of the item's image (None: items without images, e.g. texts to embed).
    """
    from polymodal.data.images import load_image
    from polymodal.infer.inputs import check_text, chunks

    rows = [dict(it) for it in items]

    def failed(i: int, exc: Exception) -> None:
        where = rows[i].get("_where")
        rows[i]["error"] = f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)

    def attempt(batch: list[tuple[int, object]]) -> None:  # [(row index, decoded input)]
        try:
            results = fn([x for _, x in batch], [items[i] for i, _ in batch])
        except (PolymodalError, ValueError) as exc:
            if len(batch) == 1:
                return failed(batch[0][0], exc)
            for one in batch:  # one bad item must not fail its neighbours: run each alone
                attempt([one])
            return
        for (i, _), res in zip(batch, results):
            rows[i].update(res)

    todo = []
    for i, row in enumerate(rows):
        if "error" in row:
            continue
        try:
            if text is not None:
                check_text(row[text], text)
            todo.append(i)
        except PolymodalError as exc:
            failed(i, exc)
    for chunk in chunks(todo, batch_size):
        batch = []
        for i in chunk:
            try:
                batch.append((i, load_image(rows[i][image]) if image else rows[i][text]))
            except PolymodalError as exc:
                failed(i, exc)
        if batch:
            attempt(batch)
    return rows


def _finish(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    _emit(rows, as_json, columns)
    if any("error" in r for r in rows):
        raise typer.Exit(EXIT_ITEMS_FAILED)


@app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="JSON lines on stdout")):
    """List the registered recipes."""
    from polymodal.models.recipes import get_recipe, list_recipes

    rows = [{"name": n, "task": get_recipe(n).get("task"), "description": get_recipe(n).get("description", "")}
            for n in list_recipes()]
    _emit(rows, as_json, ["name", "task", "description"])


GEN_HELP = "Generation: --beams, --max-tokens (new tokens), --temperature/--top-p/--seed to sample."


@app.command("caption")
def caption_cmd(images: list[str] = typer.Argument(..., help="image files, folders or globs"),
                model: str = typer.Option(..., "--model", "-m", help="checkpoint dir, HF dir or recipe"),
                beams: int = typer.Option(1, "--beams", min=1), max_tokens: int = typer.Option(20, "--max-tokens", min=1),
                temperature: Optional[float] = typer.Option(None, "--temperature"),
                top_p: float = typer.Option(1.0, "--top-p"), seed: Optional[int] = typer.Option(None, "--seed"),
                batch_size: int = typer.Option(16, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
                as_json: bool = typer.Option(False, "--json")):
    """Caption images: one {"image", "caption"} per image."""
    from polymodal.infer.inputs import image_items
    from polymodal.infer.loaded import GenerationOptions

    gen = dict(num_beams=beams, max_new_tokens=max_tokens, do_sample=temperature is not None,
               temperature=1.0 if temperature is None else temperature, top_p=top_p, seed=seed)
    GenerationOptions.of(gen)  # a bad --temperature / --top-p is a usage error, before the model loads
    m = _load(model, device)
    rows = _run_items(image_items(images), lambda ims, _: [{"caption": c} for c in m.caption(ims, **gen)], batch_size)
    _finish(rows, as_json, ["image", "caption"])


@app.command("ask")
def ask_cmd(model: str = typer.Option(..., "--model", "-m"), image: Optional[str] = typer.Option(None, "--image"),
            question: Optional[str] = typer.Option(None, "--question", "-q"),
            requests: Optional[str] = typer.Option(None, "--requests", help='JSONL of {"image", "question"}'),
            beams: int = typer.Option(1, "--beams", min=1), max_tokens: int = typer.Option(10, "--max-tokens", min=1),
            batch_size: int = typer.Option(16, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
            as_json: bool = typer.Option(False, "--json")):
    """Answer a question about an image: {"image", "question", "answer"}."""
    from polymodal.infer.inputs import request_items

    items = request_items(requests, image, question, "question")
    m = _load(model, device)
    rows = _run_items(items, lambda ims, its: [{"answer": a} for a in m.answer(
        ims, [it["question"] for it in its], num_beams=beams, max_new_tokens=max_tokens)], batch_size, text="question")
    _finish(rows, as_json, ["image", "question", "answer"])


@app.command("classify")
def classify_cmd(images: list[str] = typer.Argument(...), model: str = typer.Option(..., "--model", "-m"),
                 labels: str = typer.Option(..., "--labels", help="comma-separated class names, each once"),
                 template: str = typer.Option(ZERO_SHOT_TEMPLATE, "--template"),
                 batch_size: int = typer.Option(32, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
                 as_json: bool = typer.Option(False, "--json")):
    """Zero-shot classify images over --labels: {"image", "label", "scores"}."""
    from polymodal.infer.inputs import check_labels, image_items

    try:
        names = check_labels([x.strip() for x in labels.split(",") if x.strip()])
    except PolymodalError as exc:
        raise ConfigError(f"--labels: {exc} (e.g. --labels cat,dog)") from None
    m = _load(model, device)
    rows = _run_items(image_items(images), lambda ims, _: m.classify(ims, names, template=template), batch_size)
    _finish(rows, as_json, ["image", "label", "scores"])


@app.command("embed")
def embed_cmd(inputs: list[str] = typer.Argument(..., help="images (files/folders/globs), or texts with --text"),
              model: str = typer.Option(..., "--model", "-m"), text: bool = typer.Option(False, "--text"),
              batch_size: int = typer.Option(32, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
              as_json: bool = typer.Option(True, "--json/--table")):
    """Embed images or texts: {"image"|"text", "embedding"} (L2-normalised)."""
    from polymodal.infer.inputs import image_items

    m = _load(model, device)

    def vectors(embeddings) -> list[dict]:
        return [{"embedding": [round(x, 6) for x in e.tolist()]} for e in embeddings]

    if text:
        rows = _run_items([{"text": t} for t in inputs], lambda texts, _: vectors(m.embed_texts(texts)), batch_size,
                          text="text", image=None)
        return _finish(rows, as_json, ["text", "embedding"])
    rows = _run_items(image_items(inputs), lambda ims, _: vectors(m.embed_images(ims)), batch_size)
    _finish(rows, as_json, ["image", "embedding"])


@app.command("translate")
def translate_cmd(model: str = typer.Option(..., "--model", "-m"), image: Optional[str] = typer.Option(None, "--image"),
                  text: Optional[str] = typer.Option(None, "--text"),
                  requests: Optional[str] = typer.Option(None, "--requests", help='JSONL of {"image", "text"}'),
                  beams: int = typer.Option(1, "--beams", min=1),
                  max_tokens: int = typer.Option(32, "--max-tokens", min=1),
                  batch_size: int = typer.Option(16, "--batch-size", min=1),
                  device: str = typer.Option("cpu", "--device"), as_json: bool = typer.Option(False, "--json")):
    """Translate a sentence with its image: {"image", "text", "translation"}."""
    from polymodal.infer.inputs import request_items

    items = request_items(requests, image, text, "text")
    m = _load(model, device)
    rows = _run_items(items, lambda ims, its: [{"translation": t} for t in m.translate(
        ims, [it["text"] for it in its], num_beams=beams, max_new_tokens=max_tokens)], batch_size, text="text")
    _finish(rows, as_json, ["image", "text", "translation"])


@app.command("ground")
def ground_cmd(model: str = typer.Option(..., "--model", "-m", help="checkpoint dir of a text detector"),
               image: Optional[str] = typer.Option(None, "--image"),
               text: Optional[str] = typer.Option(None, "--text", help="a referring expression or a phrase"),
               requests: Optional[str] = typer.Option(None, "--requests", help='JSONL of {"image", "text"}'),
               threshold: Optional[float] = typer.Option(
                   None, "--threshold", min=0.0, max=1.0,
                   help="every box scoring at least this (detection; maybe none); default: the one best box"),
               out: Optional[str] = typer.Option(None, "--out", help="draw the boxes into this PNG "
                                                 "(several requests: OUT-0.png, OUT-1.png, ...)"),
               batch_size: int = typer.Option(16, "--batch-size", min=1), device: str = typer.Option("cpu", "--device"),
               as_json: bool = typer.Option(False, "--json")):
    """Find what a text names in an image: {"image", "text", "boxes": [{"box", "score"}]}."""
    from polymodal.infer.draw import draw_boxes
    from polymodal.infer.inputs import request_items

    items = request_items(requests, image, text, "text")
    m = _load(model, device)

    def run(ims, its):
        texts = [it["text"] for it in its]
        found = m.detect(ims, texts, threshold) if threshold is not None else [[g] for g in m.ground(ims, texts)]
        return [{"boxes": f, "_image": im} for f, im in zip(found, ims)]

    rows = _run_items(items, run, batch_size, text="text")
    drawn = [r for r in rows if "_image" in r]
    for k, r in enumerate(drawn):
        if out:
            path = Path(out) if len(drawn) == 1 else Path(out).with_name(f"{Path(out).stem}-{k}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_boxes(r["_image"], [b["box"] for b in r["boxes"]], [f"{b['score']:.2f}" for b in r["boxes"]],
                       scale=max(1, 256 // max(r["_image"].size))).save(path)
            r["drawn"] = str(path)
        del r["_image"]
    _finish(rows, as_json, ["image", "text", "boxes"] + (["drawn"] if out else []))


@app.command("retrieve")
def retrieve_cmd(model: str = typer.Option(..., "--model", "-m"),
                 images: str = typer.Option(..., "--images", help="folder of images (indexed once, reused)"),
                 query: list[str] = typer.Option(..., "--query", help="a text, or an image path (repeatable)"),
                 top_k: int = typer.Option(5, "--top-k", min=1), device: str = typer.Option("cpu", "--device"),
                 as_json: bool = typer.Option(False, "--json")):
    """Text->image or image->image search over a folder: {"query", "image", "score", "rank"}."""
    from polymodal.infer.index import ImageIndex, model_key, query_embedding

    m = _load(model, device)
    index, reused = ImageIndex.open(images, m, model_key(model))
    logging.getLogger(__name__).info("index %s (%d images)", "reused" if reused else "built", len(index.paths))
    rows = []
    for q in query:
        try:
            rows += [{"query": q, **hit} for hit in index.search(query_embedding(m, q), top_k)]
        except PolymodalError as exc:
            rows.append({"query": q, "error": str(exc)})
    _finish(rows, as_json, ["query", "rank", "image", "score"])


@app.command("compare-fusions")
def compare_fusions_cmd(data: str = typer.Option(..., "--data", "-d", help="shapes-world directory or VQA spec"),
                        out: str = typer.Option("fusion-comparison", "--out", "-o"),
                        steps: int = typer.Option(600, "--steps", min=1),
                        batch_size: int = typer.Option(64, "--batch-size", min=1),
                        seeds: str = typer.Option("0", "--seeds", help="comma-separated"),
                        fusions: Optional[str] = typer.Option(None, "--fusions",
                                                              help="comma-separated (default: all six modules)"),
                        dim: int = typer.Option(128, "--dim", min=1),
                        tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="tokenizer folder"),
                        limit: Optional[int] = typer.Option(None, "--limit", min=1,
                                                            help="evaluate on the first N questions")):
    """Train the same VQA model with each fusion module (same data, budget, seeds) and tabulate the results."""
    from polymodal.compare import FUSIONS, compare_fusions

    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give whole numbers separated by commas, e.g. 0,1,2") from None
    compare_fusions(data, out, steps=steps, seeds=seed_list,
                    fusions=[f.strip() for f in fusions.split(",")] if fusions else FUSIONS, dim=dim,
                    batch_size=batch_size, tokenizer=tokenizer, eval_limit=limit)
    typer.echo((Path(out) / "fusion_comparison.md").read_text())


@app.command("demo")
def demo_cmd(out: str = typer.Option("demo-out", "--out", help="output directory (finished stages are reused)"),
             quick: bool = typer.Option(False, "--quick", help="the ~1-minute version"),
             redo: bool = typer.Option(False, "--redo", help="run every stage again")):
    """The whole story on the embedded shapes world: data, pretraining, fine-tuning, evaluation, report."""
    from polymodal.demo import run_demo

    run_demo(out, quick=quick, redo=redo)


@app.command("serve")
def serve_cmd(model: str = typer.Option(..., "--model", "-m", help="checkpoint dir, HF dir or recipe"),
              host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
              port: int = typer.Option(8000, "--port", min=0, max=65535),
              max_batch: int = typer.Option(16, "--max-batch", min=1, help="most images/texts per forward pass (1: no batching)"),
              max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", min=0, help="longest wait for a batch to fill"),
              max_queue: int = typer.Option(256, "--max-queue", min=1, help="requests waiting or running; more get 503"),
              max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="largest request body; bigger get 413"),
              timeout_s: float = typer.Option(60.0, "--timeout-s", help="a request without an answer by then gets 504"),
              max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, help="largest image, width x height"),
              max_images: int = typer.Option(32, "--max-images", min=1, help="most images in one request"),
              index: Optional[str] = typer.Option(None, "--index", help="folder of images to search (POST /retrieve)"),
              device: str = typer.Option("cpu", "--device"),
              log_level: str = typer.Option("info", "--log-level")):
    """Serve a model over HTTP: task endpoints, /v1/chat/completions, /v1/embeddings and a web page at /."""
    from polymodal.serve import ServeSettings, serve

    serve(ServeSettings(model=model, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                        max_queue=max_queue, max_upload_mb=max_upload_mb, timeout_s=timeout_s, max_pixels=max_pixels,
                        max_images=max_images, index=index, device=device), log_level=log_level)


def task_command(task) -> Callable:
    """`polymodal <task.command> --model SRC IMAGE…` -> {"image", <task.prediction_key>} per image,
    for a task that brings its loaded-model method through `Task.run` (polymodal.tasks). The
    built-in tasks have the hand-written commands above."""

    def command(images: list[str] = typer.Argument(..., help="image files, folders or globs"),
                model: str = typer.Option(..., "--model", "-m", help="checkpoint dir, HF dir or recipe"),
                batch_size: int = typer.Option(16, "--batch-size", min=1),
                device: str = typer.Option("cpu", "--device"), as_json: bool = typer.Option(False, "--json")):
        from polymodal.infer.inputs import image_items

        m = _load(model, device)
        key = task.prediction_key or task.method
        rows = _run_items(image_items(images), lambda ims, _: [{key: v} for v in getattr(m, task.method)(ims)],
                          batch_size)
        _finish(rows, as_json, ["image", key])

    command.__doc__ = (task.__doc__ or f"Run task {task.name}.").strip().splitlines()[0]
    return command


def _mount_task(task) -> None:
    """Give a registered task its command: its own (`Task.cli()`), else `task_command` when it
    runs through `Task.run`; built-in tasks' commands are the ones above."""
    from polymodal.tasks import Task

    command = task.cli() or (task_command(task) if task.command and type(task).run is not Task.run else None)
    if command is None:
        return
    taken = {c.name for c in app.registered_commands}
    if task.command in taken:
        raise ValueError(f"task {task.name!r}: the command {task.command!r} exists already; choose another")
    app.command(task.command)(command)


def _mount_subapps() -> None:
    """Areas keep their commands in their own module (`polymodal data …`, `polymodal eval`)."""
    from polymodal.eval.cli import eval_cmd
    from polymodal.train.cli import train_command

    app.command("eval")(eval_cmd)
    app.command("train")(train_command)
    for module, name in (("polymodal.data.cli", "data"),):
        try:
            sub = __import__(module, fromlist=["app"]).app
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        app.add_typer(sub, name=name)


_mount_subapps()


def _mount_tasks() -> None:
    from polymodal.tasks import on_register

    on_register(_mount_task)  # tasks registered later (a plugin, a test) get their command too


_mount_tasks()


def main() -> None:
    import os

    # Library chatter (weight-loading progress bars, generation hints) is not for CLI users.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()  # errors become messages and exit codes in the command group (polymodal.console)
