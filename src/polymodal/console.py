"""What every `polymodal` command promises the user about errors, in one place.

A `PolymodalError` (a bad config, spec, option or file) or an OSError (a path that cannot be
read or written) ends the command with one line `error: <what, where, what to do>` on stderr
and exit code 2 (`EXIT_USAGE`), never a traceback. Commands that run many items (images, requests, texts) give a failing item an
`error` row and go on; they exit 1 (`EXIT_ITEMS_FAILED`) after writing every row when any item
failed. docs/errors.md lists what each kind of bad input gets.

The root command group (polymodal/cli.py) and the standalone trainer (`python -m
polymodal.train`) are built with `GuardedGroup` / `GuardedCommand`, so every subcommand,
whichever module defines it, gets the same treatment; a command only raises.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import typer
from typer.core import TyperCommand, TyperGroup

from polymodal.errors import PolymodalError

EXIT_OK = 0
#: some items (images, requests, records) failed; every other item's result was written
EXIT_ITEMS_FAILED = 1
#: the command could not run: a bad option, config, spec or file (click's usage errors are 2 too)
EXIT_USAGE = 2


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a PolymodalError raised in the block into `error: …` on stderr and exit code 2; so
    too an OSError, which here means a path the user gave cannot be read or written (an output
    file that is a folder, a full disk, no permission)."""
    try:
        yield
    except PolymodalError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}; check the path and its permissions", err=True)
        raise typer.Exit(EXIT_USAGE) from None


class GuardedGroup(TyperGroup):
    """A command group whose subcommands' PolymodalErrors become messages (`user_errors`)."""

    def invoke(self, ctx) -> Any:
        with user_errors():
            return super().invoke(ctx)


class GuardedCommand(TyperCommand):
    """A lone command (an app of one command) with the same guard as `GuardedGroup`."""

    def invoke(self, ctx) -> Any:
        with user_errors():
            return super().invoke(ctx)
