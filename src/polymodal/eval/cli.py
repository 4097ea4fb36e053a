"""`polymodal eval`: the command over polymodal.eval.run.evaluate."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from polymodal.errors import DataError, PolymodalError
from polymodal.tasks.retrieval import RERANK_K


def eval_cmd(data: str = typer.Option(..., "--data", "-d", help="dataset spec or a shapes-world directory"),
             task: str = typer.Option(..., "--task", "-t",
                                      help="a registered task: captioning | vqa | retrieval | classification | "
                                           "translation | grounding | ..."),
             model: Optional[str] = typer.Option(None, "--model", "-m", help="checkpoint dir, HF dir or recipe"),
             predictions: Optional[str] = typer.Option(None, "--predictions",
                                                       help="score a predictions file instead: JSON Lines, or a "
                                                            "JSON array (official COCO / VQA result files)"),
             split: Optional[str] = typer.Option(None, "--split", "-s"),
             out: Optional[str] = typer.Option(None, "--out", "-o", help="write the metrics JSON here"),
             limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N records"),
             lang: str = typer.Option("en", "--lang", help="en | zh (captioning references, retrieval texts)"),
             baseline: bool = typer.Option(False, "--baseline", help="also score shuffled predictions (chance) and, for VQA, the question-only prior"),
             ceiling: bool = typer.Option(False, "--ceiling",
                                          help="score no model: the best an ideal model can do on the data "
                                               "(retrieval on shapes-world data)"),
             save_predictions: Optional[str] = typer.Option(None, "--save-predictions",
                                                            help="write the predictions: FILE.json as a JSON array "
                                                                 "(the official result format), else JSON Lines"),
             beams: int = typer.Option(1, "--beams", min=1), max_tokens: int = typer.Option(32, "--max-tokens", min=1),
             repetition_penalty: Optional[float] = typer.Option(
                 None, "--repetition-penalty", min=1.0,
                 help="generation: divide the scores of tokens already written by this (1: off)"),
             no_repeat_ngram: Optional[int] = typer.Option(
                 None, "--no-repeat-ngram", min=1, help="generation: never repeat an n-gram of this size"),
             batch_size: int = typer.Option(32, "--batch-size", min=1),
             rerank: Optional[str] = typer.Option(None, "--rerank",
                                                  help="retrieval: re-score each direction's top candidates with "
                                                       "this model (a captioner's likelihood, or an ITM head)"),
             rerank_k: int = typer.Option(RERANK_K, "--rerank-k", min=1, help="candidates per query to re-rank"),
             as_json: bool = typer.Option(False, "--json", help="print the result as one JSON line")):
    """Evaluate a model (or a predictions file) on a dataset with the task's standard metrics."""
    from polymodal.eval.run import evaluate, finite, write_predictions
    from polymodal.tasks import get_task

    spec = get_task(task)
    # Generation settings for the tasks whose model writes text (the task may fix the length).
    gen = {"num_beams": beams, "max_new_tokens": spec.max_new_tokens or max_tokens} if spec.generates else {}
    for flag, key, value in (("--repetition-penalty", "repetition_penalty", repetition_penalty),
                             ("--no-repeat-ngram", "no_repeat_ngram_size", no_repeat_ngram)):
        if value is not None:
            if not spec.generates:
                raise DataError(f"{flag} is a generation setting: {spec.name} models do not generate text")
            gen[key] = value
    if rerank is not None:
        if spec.name != "retrieval":
            raise DataError(f"--rerank re-ranks retrieval candidates: use it with --task retrieval, not {task}")
        gen.update(rerank=rerank, rerank_k=rerank_k)
    try:
        result = evaluate(spec, data, model=model, predictions=predictions, split=split, limit=limit,
                          batch_size=batch_size, lang=lang, baseline=baseline,
                          keep_predictions=bool(save_predictions), ceiling=ceiling, **(gen if model else {}))
    except ValueError as exc:  # a metric refusing the data; PolymodalErrors are the command group's
        if isinstance(exc, PolymodalError):
            raise
        raise DataError(str(exc)) from exc
    result["model"] = "ceiling" if ceiling else model or predictions
    preds = result.pop("predictions", None)
    if save_predictions and preds is not None:
        write_predictions(save_predictions, spec, preds)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(finite(result), indent=2, ensure_ascii=False))
    if as_json:
        typer.echo(json.dumps(finite(result), ensure_ascii=False))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Metric keys ("accuracy[question_type=count]") and paths are text, not rich markup.
    extra = [(key, name) for key, name in (("baseline", "shuffled baseline"), ("blind", "question-only baseline"))
             if key in result]
    table = Table("metric", "value", *[name for _, name in extra],
                  title=escape(f"{task} on {data} (split: {split or 'default'}), n={result['n']}"))
    for k, v in result["metrics"].items():
        row = [k, _fmt(k, v)] + [_fmt(k, result[key].get(k)) for key, _ in extra]
        table.add_row(*map(escape, row))
    Console().print(table)


def _fmt(key: str, v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return str(int(v)) if _is_count(key) and v.is_integer() else f"{v:.4f}"
    return str(v)


def _is_count(key: str) -> bool:
    """Counts among the metrics: `n`, `n[answer_type=...]`, `n_mentions`, `n_images`, ..."""
    return key == "n" or key.startswith(("n[", "n_"))
