"""`emunet weights`: border weight maps (U-Net paper, Eq. 2) of a label TIFF or Zarr volume.

A TIFF is computed here in memory. Zarr labels (a path with ``.zarr``, a Zarr directory or
an fsspec URL) run the Prefect flow `precompute-weights` (`flows/precompute_weights.py`,
blockwise `pipeline.weights.compute_weight_maps`) into an OME-Zarr group; --no-flow calls
the pipeline directly.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from emunet.cli.common import console, user_errors


class ClassBalanceChoice(str, Enum):
    """How w_c balances membrane and cell pixels."""

    frequency = "frequency"
    none = "none"


def register(app: typer.Typer) -> None:
    """Add the `weights` command to ``app``."""

    @app.command("weights")
    def weights(
        labels: Annotated[
            str,
            typer.Argument(
                help="Label TIFF (one 2D image or a (z, y, x) stack) or Zarr volume; 0 = membrane, >0 = cell.",
                show_default=False,
            ),
        ],
        out: Annotated[
            str,
            typer.Argument(
                help="Output float32 TIFF: one weight map per slice (or one 3D map with --3d); "
                "an OME-Zarr group for Zarr labels.",
                show_default=False,
            ),
        ],
        w0: Annotated[float, typer.Option("--w0", help="Peak of the border term.")] = 10.0,
        sigma: Annotated[
            float, typer.Option("--sigma", help="Width of the border term (pixels).")
        ] = 5.0,
        class_balance: Annotated[
            ClassBalanceChoice,
            typer.Option("--class-balance", help="w_c: inverse class frequency, or none (1)."),
        ] = ClassBalanceChoice.frequency,
        instances: Annotated[
            bool,
            typer.Option(
                "--instances/--binary",
                help="Each non-zero id is a cell (instances), or cells are the 4-connected "
                "components of label > 0 (binary).",
            ),
        ] = False,
        volume: Annotated[
            bool,
            typer.Option("--3d", help="One 3D map with true 3D distances (a stack of instances)."),
        ] = False,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace OUT if emunet wrote it.")
        ] = False,
        flow: Annotated[
            bool,
            typer.Option("--flow/--no-flow", help="Zarr labels: run the Prefect flow precompute-weights (or the pipeline directly)."),
        ] = True,
    ) -> None:
        """Compute the U-Net border weight map w = w_c + w0 exp(-(d1+d2)^2 / 2 sigma^2)."""
        with user_errors():
            from flows._common import looks_like_zarr

            if looks_like_zarr(labels):
                from emunet.cli.flow_commands import weights_with_flow
                from pipeline.ownership import check_output

                check_output(out, reads=(labels,), overwrite=overwrite, kind="weights")  # before the flow starts

                done = weights_with_flow(
                    labels, out, flow=flow, w0=w0, sigma=sigma, class_balance=class_balance.value,
                    instances=instances, mode="3d" if volume else "2d", overwrite=overwrite,
                )  # fmt: skip
                console.print(
                    f"weights: {done['num_blocks']} block(s) of {tuple(done['block_shape'])} -> {out} | {done['seconds']:.2f} s",
                    highlight=False, soft_wrap=True,
                )  # fmt: skip
                return
            import numpy as np

            from unetcore.io import check_tiff_output, read_tiff, write_tiff
            from unetcore.weightmap import WeightMapConfig, border_weight_map, check_has_membrane, weight_map_stack

            labels, out = Path(labels), Path(out)
            if not labels.is_file():
                raise FileNotFoundError(f"expected a label TIFF at {labels}, got no such file")
            from flows._common import check_kind_of_data

            check_kind_of_data(str(labels), "labels")  # not a probability or weight map emunet wrote
            check_tiff_output(out, overwrite=overwrite, reads=(labels,), kind="weights")
            config = WeightMapConfig(w0=w0, sigma=sigma, class_balance=class_balance.value)
            data = read_tiff(labels)
            start = time.perf_counter()
            if volume:
                if data.ndim != 3:
                    raise ValueError(
                        f"expected a (z, y, x) volume with --3d, got shape {data.shape}"
                    )
                result = border_weight_map(data, config, instances=instances)
                slices = 1
            elif data.ndim == 2:
                result = border_weight_map(data, config, instances=instances)
                slices = 1
            elif data.ndim == 3:
                result = weight_map_stack(data, config, instances=instances)
                slices = data.shape[0]
            else:
                raise ValueError(
                    f"expected a 2D image or a (z, y, x) stack, got shape {data.shape}"
                )
            elapsed = time.perf_counter() - start
            check_has_membrane(int(np.count_nonzero(data)), data.size, labels)  # after the label checks, before writing
            result = np.asarray(result, dtype=np.float32)
            write_tiff(out, result, overwrite=overwrite, kind="weights", reads=(labels,))
            kind = "3D volume" if volume else f"{slices} slice(s)"
            console.print(
                f"weights: {kind} {tuple(data.shape)} -> {out} | min {result.min():.3f} "
                f"max {result.max():.3f} mean {result.mean():.3f} | {elapsed:.2f} s",
                highlight=False,
                soft_wrap=True,
            )
