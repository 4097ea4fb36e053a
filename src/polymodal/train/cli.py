"""`polymodal train CONFIG.yaml [--set a.b=c …] [--output-dir DIR] [--resume]`.

Mounted by polymodal/cli.py as `app.command("train")(train_command)`; also runs on its own as
`python -m polymodal.train CONFIG.yaml …`, which is how `accelerate launch` / `torchrun` start a
multi-process run:

    accelerate launch --num_processes 4 -m polymodal.train configs/shapes/pretrain.yaml
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from polymodal.console import GuardedCommand


def train_command(
    config: Path = typer.Argument(..., help="run config YAML (see configs/shapes/)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a config value: --set optim.lr=1e-3"),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="run directory (default: the config's)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run directory's newest checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON line"),
):
    """Train (pretrain or fine-tune) a model as CONFIG says; checkpoints go to the run directory."""
    from polymodal.train.trainer import train

    logging.getLogger("polymodal").setLevel(logging.INFO)
    result = train(config, overrides=list(set_ or []), output_dir=output_dir, resume=resume)
    summary = {"output_dir": str(result.output_dir), "step": result.step,
               "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
               "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
               "best_value": result.best_value, "stopped_early": result.stopped_early, "skipped": result.skipped}
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        typer.echo(f"trained {result.step} steps; checkpoint {summary['last_checkpoint']}"
                   + (f"; best {summary['best_checkpoint']} ({result.best_value:.4g})" if result.best_checkpoint else ""))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = typer.Typer(add_completion=False)
    app.command(cls=GuardedCommand)(train_command)  # errors as messages, as under `polymodal train`
    app()
