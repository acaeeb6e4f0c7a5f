"""Helpers shared by the sub-commands: clear errors at the boundary, console output."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

console = Console(stderr=True)

# Errors that carry a message written for the user ("expected X, got Y ... fix: ...").
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    KeyError,
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user-facing error into a one-paragraph message and exit code 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as exc:  # pragma: no cover - exercised through the CLI tests
        name = type(exc).__name__
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        console.print(f"[bold red]error[/] ({name}): {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


SCHEDULER_LOST = 3  # exit code: the run stopped with its scheduler; --resume continues it


@contextlib.contextmanager
def scheduler_lost() -> Iterator[None]:
    """The Dask scheduler went away mid-run: its message and exit code 3 (not a usage error)."""
    from pipeline.submit import SchedulerLostError

    try:
        yield
    except SchedulerLostError as exc:
        console.print(f"[bold red]error[/] (scheduler lost): {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=SCHEDULER_LOST) from None


def print_warnings(warnings: list[str] | tuple[str, ...]) -> None:
    """Each warning about the input as one paragraph on stderr."""
    for text in warnings:
        console.print(f"[bold yellow]warning[/]: {text}", highlight=False, soft_wrap=True)


def echo_json(obj: object) -> None:
    """Print one JSON object on stdout (nothing else goes to stdout with --json)."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
