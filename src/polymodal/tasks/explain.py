"""Explanations: heat maps of what a model looked at (polymodal.explain), for every model family
with a vision tower, and for the Hugging Face checkpoints polymodal explains.

`polymodal.load(src).explain(images, texts, method=...)` and `polymodal explain` run it; the
pointing game and the deletion curve (`polymodal explain --pointing-game / --deletion`) measure
how good a method's maps are on a shapes world."""
from __future__ import annotations

from typing import Optional  # the command's annotations are evaluated in this module's globals

from polymodal.tasks.base import Task, register_task


@register_task
class Explain(Task):
    """Explain a model's output on an image: a heat map over the image (PNG) and the raw map."""

    name = "explain"
    method = "explain"
    command = "explain"
    kind = "model"

    def offered_by(self, model, trained_for):
        # Every polymodal family with a vision tower: what it looked at is a map over the image.
        return getattr(model, "vision", None) is not None and any(
            hasattr(model, head) for head in ("classifier", "itm_head", "image_proj", "decoder"))

    def run(self, loaded, images, texts=None, method=None, target=None, max_new_tokens=20, **_):
        from polymodal.explain import explain

        return explain(loaded, images, texts, method=method, target=target, max_new_tokens=max_new_tokens)

    def cli(self):
        return _explain_command()


def _split(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _explain_command():
    """The `polymodal explain` command (typer is imported when the CLI mounts it)."""
    import json
    from pathlib import Path

    import typer

    from polymodal.errors import ConfigError

    def explain_command(
            model: str = typer.Option(..., "--model", "-m", help="checkpoint dir, HF dir or recipe"),
            image: Optional[str] = typer.Option(None, "--image", help="the image to explain"),
            question: Optional[str] = typer.Option(None, "--question", "-q", help="a question (VQA models)"),
            text: Optional[str] = typer.Option(None, "--text", help="a text (ITM / retrieval / translation models)"),
            caption: bool = typer.Option(False, "--caption", help="explain the model's caption of the image"),
            method: Optional[str] = typer.Option(None, "--method", help="grad_attention | relevance | attention | "
                                                 "grad_x_activation | gradcam (default: the model's first)"),
            target: Optional[str] = typer.Option(None, "--target", help="fusion encoders: answer | itm | itc"),
            out: Optional[str] = typer.Option(None, "--out", "-o", help="the overlay PNG; with --pointing-game / "
                                              "--deletion: the results JSON"),
            max_tokens: int = typer.Option(20, "--max-tokens", min=1, help="length of the caption explained"),
            pointing_game: bool = typer.Option(False, "--pointing-game", help="measure: the pointing game on --data"),
            deletion: bool = typer.Option(False, "--deletion", help="measure: the deletion curve (VQA) on --data"),
            data: Optional[str] = typer.Option(None, "--data", "-d", help="a shapes-world directory (measurements)"),
            split: str = typer.Option("test", "--split", "-s"),
            source: str = typer.Option("vqa", "--source", help="pointing game: vqa (questions) | ground (references)"),
            methods: Optional[str] = typer.Option(None, "--methods", help="pointing game: comma-separated methods"),
            types: Optional[str] = typer.Option(None, "--types", help="comma-separated question types (color,shape)"),
            limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N usable records"),
            steps: int = typer.Option(8, "--steps", min=1, help="deletion: points of the curve after 0"),
            device: str = typer.Option("cpu", "--device"),
            as_json: bool = typer.Option(False, "--json", help="one JSON line on stdout (with the raw map)")):
        """Explain a model's output on an image: a heat map overlay (--out heat.png) and the raw map
        (--json); or measure a method's maps (--pointing-game, --deletion) on a shapes world."""
        import polymodal
        from polymodal.eval.run import finite

        if pointing_game or deletion:
            if data is None:
                raise ConfigError("--pointing-game / --deletion measure maps on data: give --data DIR (a shapes world)")
            from polymodal.explain.quality import deletion_curve, pointing_game as game

            m = polymodal.load(model, device=device)
            if pointing_game:
                result = game(m, data, split=split, source=source, methods=_split(methods) or _split(method),
                              limit=limit, types=_split(types), target=target)
            else:
                result = deletion_curve(m, data, split=split, method=method, steps=steps, limit=limit or 500,
                                        types=_split(types))
            result = {"model": model, "data": data, **finite(result)}
            if out:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text(json.dumps(result, indent=2))
            typer.echo(json.dumps(result) if as_json else _summary(result))
            return
        given = [x for x in (question, text) if x is not None]
        if image is None or len(given) + caption != 1:
            raise ConfigError("give --image and exactly one of --question, --text or --caption "
                              "(or --pointing-game / --deletion with --data)")
        m = polymodal.load(model, device=device)
        ex = m.explain([image], None if caption else given, method=method, target=target, max_new_tokens=max_tokens)[0]
        if out:
            from polymodal.explain import render

            render(ex, image, out)
        row = {**ex.to_dict(maps=as_json), "image": image, "out": out}
        if as_json:
            typer.echo(json.dumps(finite(row), ensure_ascii=False))
        else:
            typer.echo(f"{image}: {ex.method} -> {ex.answer if ex.answer is not None else ''} "
                       f"(score {ex.score:.4f})" + (f"; overlay in {out}" if out else ""))

    return explain_command


def _summary(result: dict) -> str:
    if "methods" in result:
        lines = [f"pointing game, {result['source']} {result['split']}, n={result['n']} "
                 "(share of maps whose maximum is in the named object's box)"]
        for name, rates in list(result["methods"].items()) + [("centre baseline", result["centre"]),
                                                                ("random baseline", result["random"])]:
            lines.append(f"  {name:18s} " + "  ".join(f"{k}={v:.3f}" for k, v in rates.items()))
        return "\n".join(lines)
    return (f"deletion curve, {result['method']}, n={result['n']}: AUC relevant-first {result['auc_relevant']:.3f}, "
            f"random {result['auc_random']:.3f}\n  relevant: {result['relevant']}\n  random:   {result['random']}")
