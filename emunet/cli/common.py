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
    ConnectionError,  # a scheduler that is not there or does not answer (pipeline.cluster)
    TimeoutError,  # no worker with a GPU slot in time
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


TILE_HELP = (
    "Model INPUT tile in voxels (the U-Net's input; its output is smaller by the halo, e.g. 572 → 388): "
    "one size for every axis (572) or one per axis (572,572; z,y,x for a 3D model)"
)


def parse_tile(text: str | None) -> tuple[int, ...] | None:
    """``--tile`` as given: "572", "572,572", "572x572" or "76 252 252" → a tuple of sizes."""
    import re

    if text is None:
        return None
    parts = [p for p in re.split(r"[,x\s]+", str(text).strip()) if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or len(sizes) > 3 or min(sizes) < 1:
        raise ValueError(f"expected --tile as one positive size (572) or one per axis (572,572), got {text!r}")
    return sizes


def expand_tile(tile: tuple[int, ...] | None, dims: int) -> tuple[int, ...] | None:
    """One size for every axis of a `dims`-D model, or exactly `dims` sizes."""
    if tile is None:
        return None
    if len(tile) == 1:
        return tile * dims
    if len(tile) != dims:
        raise ValueError(
            f"expected --tile as one size or {dims} sizes for this {dims}D model, got {','.join(map(str, tile))}"
        )
    return tile


INTERRUPTED = 130  # exit code after Ctrl-C (128 + SIGINT), as shells report it


def interrupted(output: str) -> int:
    """After Ctrl-C: one line saying what is done and how to continue; the exit code."""
    done = ""
    try:
        from pipeline.ledger import Ledger

        summary = Ledger.open(str(output)).summary()
        done = f": {summary.done} of {summary.total} blocks done in {output} (its ledger keeps them)"
    except Exception:  # no output yet, or not readable: nothing to count
        done = f": no output written at {output}"
    console.print(
        f"[bold red]interrupted[/]{done}; rerun the same command with --resume to continue",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    return INTERRUPTED


def print_warnings(warnings: list[str] | tuple[str, ...]) -> None:
    """Each warning about the input as one paragraph on stderr."""
    for text in warnings:
        console.print(f"[bold yellow]warning[/]: {text}", highlight=False, soft_wrap=True)


def echo_json(obj: object) -> None:
    """Print one JSON object on stdout (nothing else goes to stdout with --json)."""
    import json

    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_failures(failed: list[dict]) -> None:
    """The failed blocks of a segment run (`BlockFailure.to_dict` rows) as a table, with the
    fix: a retry with --resume, or --sparse where the input lacks chunks (retrying alone
    would fail the same way)."""
    if not failed:
        return
    from rich.table import Table

    missing = all(str(f["error"]).startswith("MissingChunkError") for f in failed)
    fix = ("the input lacks chunks: restore them, or rerun with --resume --sparse to read them as the fill value"
           if missing else "fix the cause, then rerun with --resume to retry them")
    table = Table(title=f"{len(failed)} failed block(s): {fix}")
    for name in ("block", "stage", "write offset", "shape", "error"):
        table.add_column(name)
    for f in failed[:20]:
        roi = (f.get("where") or {}).get("write_roi") or {}
        table.add_row(str(f["block_id"]), f["stage"], str(roi.get("offset", "")), str(roi.get("shape", "")), f["error"][:120])
    console.print(table)
    if len(failed[0]["error"]) > 120:
        console.print(f"block {failed[0]['block_id']}: {failed[0]['error']}", highlight=False, markup=False, soft_wrap=True)
