"""`emunet import`: a TIFF stack, HDF5 or N5 dataset → chunked, compressed OME-Zarr (v3)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from emunet.cli.common import console, user_errors


def register(app: typer.Typer) -> None:
    """Add the `import` command to ``app``."""

    @app.command("import")
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
                help="Voxel size in nm (z, y, x); default: from the source, else 1 nm.",
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

            start = time.perf_counter()
            volume = import_volume(src, dst, voxel_size=voxel_size, chunks=chunks, overwrite=overwrite, grey_range=grey_range)
            console.print(
                f"import: {src} -> {dst} | shape {volume.shape} {volume.dtype} | chunks "
                f"{volume.chunks} | voxel {volume.voxel_size} nm | {time.perf_counter() - start:.1f} s",
                highlight=False,
                soft_wrap=True,
            )
