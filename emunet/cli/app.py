"""The `emunet` command: one Typer app, each sub-command registered from its own module.

Heavy libraries (torch, dask, prefect) are imported inside the commands, so `emunet --help`
stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="emunet",
    help="U-Net segmentation of electron-microscopy volumes (Ronneberger et al. 2015).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich panels cut long option names at 80 columns
)



def _version(value: bool) -> None:
    if value:
        from emunet import __version__

        typer.echo(f"emunet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """U-Net segmentation of electron-microscopy volumes (Ronneberger et al. 2015)."""


# Each module defines `register(app)`; the order is the order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "model_info",
    "train",
    "predict",
    "weights",
    "evaluate",
    "synthetic",
    "demo",
    "import_",
    "status",
    "segment",
    "agglomerate",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"emunet.cli.{name}").register(app)


_register_all()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings for the user (a format-1 checkpoint, …) as one line, without source lines."""
    from emunet.cli.common import console

    console.print(f"[bold yellow]warning[/]: {message}", highlight=False, soft_wrap=True)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
