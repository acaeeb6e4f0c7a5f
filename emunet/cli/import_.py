"""`emunet import`: a TIFF stack, HDF5 or N5 dataset → chunked, compressed OME-Zarr (v3)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from emunet.cli.common import console, print_warnings, user_errors


def _split_voxel_size(args: list[str]) -> list[str]:
    """``--voxel-size 50,4,4`` (or ``--voxel-size=50,4,4``, ``"50 4 4"``) → ``--voxel-size 50 4 4``.

    The option takes three values; one token holding all three is split, so both forms
    work. Anything else (two numbers, a word) is refused with the two right forms.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg.startswith("--voxel-size="):
            value = arg.split("=", 1)[1]
        elif arg == "--voxel-size" and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        if value is None:
            out.append(arg)
        else:
            from pipeline.voxelsize import parse_voxel_size_text

            if not ("," in value or " " in value.strip()):  # the Z Y X form: the next two tokens
                numbers = [value]
                while len(numbers) < 3 and i + 1 < len(args) and _is_number(args[i + 1]):
                    numbers.append(args[i + 1])
                    i += 1
                value = " ".join(numbers)
            try:
                out += ["--voxel-size", *(f"{v!r}" for v in parse_voxel_size_text(value))]
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="'--voxel-size'") from None
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _ImportCommand(TyperCommand):
    """The `import` command, accepting ``--voxel-size Z,Y,X`` as well as ``Z Y X``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        import click

        try:
            args = _split_voxel_size(list(args))
        except click.UsageError as exc:
            exc.ctx = ctx
            raise
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add the `import` command to ``app``."""

    @app.command("import", cls=_ImportCommand)
    def import_(
        src: Annotated[
            str,
            typer.Argument(
                help="Source: a TIFF stack (.tif), an HDF5 dataset (file.h5:/path) or an N5 "
                "dataset (container.n5:path).",
                show_default=False,
            ),
        ],
        dst: Annotated[
            str,
            typer.Argument(help="Destination OME-Zarr (DST.zarr; a path or an fsspec URL).", show_default=False),
        ],
        voxel_size: Annotated[
            Optional[tuple[float, float, float]],
            typer.Option(
                "--voxel-size",
                metavar="Z Y X",
                help="Voxel size in nm (z, y, x), as 50 4 4 or 50,4,4; default: what the source states (TIFF "
                "resolution/ImageJ spacing, HDF5 or N5 resolution attributes, converted to nm), else 1 nm with a warning.",
                show_default=False,
            ),
        ] = None,
        chunks: Annotated[
            Optional[tuple[int, int, int]],
            typer.Option("--chunks", metavar="Z Y X", help="Chunk shape (z, y, x); default 32 256 256, clipped to the volume.", show_default=False),
        ] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DST if it is an emunet output.")] = False,
        grey_range: Annotated[
            Optional[tuple[float, float]],
            typer.Option("--grey-range", metavar="LO HI", help="Store the grey range the data uses (e.g. 0 4095 for 12-bit data in uint16); `segment` maps it to [0, 1].", show_default=False),
        ] = None,
    ) -> None:
        """Copy a volume into OME-Zarr chunk by chunk; DST appears only when complete."""
        with user_errors():
            import time

            from pipeline.importer import import_volume
            from pipeline.output import open_group

            start = time.perf_counter()
            notes: list[str] = []
            volume = import_volume(
                src, dst, voxel_size=voxel_size, chunks=chunks, overwrite=overwrite, grey_range=grey_range, warn=notes.append
            )
            origin = (open_group(dst, "r").attrs.asdict().get("emunet_import") or {}).get("voxel_size_from", "?")
            print_warnings(notes)
            voxel = ",".join(f"{v:g}" for v in volume.voxel_size)
            console.print(
                f"import: {src} -> {dst} | shape {volume.shape} {volume.dtype} | chunks "
                f"{volume.chunks} | voxel {voxel} nm (z,y,x) from {origin} | {time.perf_counter() - start:.1f} s",
                highlight=False,
                soft_wrap=True,
            )
