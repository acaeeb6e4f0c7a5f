"""`emunet predict`: cell probability for a TIFF stack (the ISBI 2012 submission format)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from emunet.cli.common import console, user_errors


def predict(
    input: Annotated[str, typer.Argument(help="Input TIFF stack (or file.h5:/dataset).")],
    output: Annotated[Path, typer.Argument(help="Output float32 TIFF: cell probability, 0 = membrane, 1 = cell.")],
    model: Annotated[Path, typer.Option(help="Checkpoint (.safetensors).")],
    tile: Annotated[Optional[int], typer.Option(help="Input tile size (legal); default: chosen automatically.")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    tta: Annotated[bool, typer.Option(help="Average over the 8 flips/rotations.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Predict every slice (2D model) or the volume (3D model) with the overlap-tile strategy."""
    with user_errors():
        import numpy as np

        from unetcore.checkpoint import load_checkpoint
        from unetcore.io import read_array, write_tiff
        from unetcore.predict import PredictConfig, TilePredictor

        if output.exists() and not overwrite:
            raise FileExistsError(f"expected a new output path, got existing {output}; pass --overwrite to replace it")
        ckpt = load_checkpoint(model)
        image = read_array(input)
        dims = ckpt.config.spatial_dims
        tile_shape = None if tile is None else (tile,) * dims
        predictor = TilePredictor(
            ckpt.model, ckpt.normalization, PredictConfig(tile_shape=tile_shape, batch_size=batch_size, device=device, tta=tta)
        )
        t0 = time.perf_counter()
        prob = predictor.predict_stack(image).astype(np.float32)
        seconds = time.perf_counter() - t0
        write_tiff(output, prob, overwrite=overwrite)
        slices = prob.shape[0] if (dims == 2 and prob.ndim == 3) else 1
        console.print(
            f"wrote {output} {prob.shape} float32 in {seconds:.1f} s "
            f"({seconds / slices:.2f} s per slice on {predictor.device})"
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
