"""`emunet predict`: cell probability for a TIFF stack (the ISBI 2012 submission format)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from emunet.cli.common import TILE_HELP, console, expand_tile, parse_tile, print_warnings, user_errors


def predict(
    input: Annotated[str, typer.Argument(help="Input TIFF stack (or file.h5:/dataset).")],
    output: Annotated[Path, typer.Argument(help="Output float32 TIFF: cell probability, 0 = membrane, 1 = cell.")],
    model: Annotated[Path, typer.Option(help="Checkpoint (.safetensors).")],
    tile: Annotated[Optional[str], typer.Option(metavar="SIZE|Y,X", help=TILE_HELP + "; default: chosen automatically.")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    tta: Annotated[bool, typer.Option(help="Average over the 8 flips/rotations.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model first (~10–60 s): meant for GPUs; on a CPU it measured no faster than the default eager channels-last model (0.83–1.01×) (bench/bench_compile.py); probabilities within ~1e-4.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output TIFF that emunet wrote.")] = False,
    grey_range: Annotated[Optional[tuple[float, float]], typer.Option(metavar="LO HI", help="Input values mapped to the model's [0, 1] (default: the dtype's range: uint8 0 255, uint16 0 65535, float 0 1).")] = None,
) -> None:
    """Predict every slice (2D model) or the volume (3D model) with the overlap-tile strategy."""
    with user_errors():
        import numpy as np

        from unetcore.checkpoint import load_checkpoint
        from unetcore.io import check_tiff_output, emunet_tiff_kind, read_array, write_tiff
        from unetcore.predict import PredictConfig, TilePredictor

        check_tiff_output(output, overwrite=overwrite, reads=(input, model), kind="probability")
        made = emunet_tiff_kind(input) if str(input).lower().endswith((".tif", ".tiff")) else None
        if made in ("probability", "weights", "synthetic-labels"):
            raise ValueError(f"expected an EM image to predict, got {input}, a {made} TIFF emunet wrote (its values are "
                             "not grey levels); pass the EM image itself")
        ckpt = load_checkpoint(model)
        image = read_array(input)
        dims = ckpt.config.spatial_dims
        if image.ndim not in (dims, dims + 1):
            raise ValueError(
                f"expected a {dims}D image or a stack of them for this {dims}D model, got shape {image.shape} in {input}"
            )
        from pipeline.grey import GreyStats, check_grey, resolve_grey_range

        chosen, source = resolve_grey_range(image, grey_range)
        print_warnings(check_grey(image.dtype, input, chosen, source, GreyStats.of(image), ckpt.normalization))
        tile_shape = expand_tile(parse_tile(tile), dims)
        config = PredictConfig(tile_shape=tile_shape, batch_size=batch_size, device=device, tta=tta, compile=compile,
                               grey_range=None if source == "dtype" else chosen)  # fmt: skip
        predictor = TilePredictor(ckpt.model, ckpt.normalization, config)
        _check_memory(ckpt.config, image, predictor)
        if compile and dims == 2 and image.ndim == 3 and len(image) > 1:  # compile on one slice, then time the stack
            t0 = time.perf_counter()
            predictor.predict(image[0])
            console.print(f"compiled the model in {time.perf_counter() - t0:.1f} s (one slice included)")
        t0 = time.perf_counter()
        prob = predictor.predict_stack(image).astype(np.float32)
        seconds = time.perf_counter() - t0
        write_tiff(output, prob, overwrite=overwrite, kind="probability", reads=(input, model))
        slices = prob.shape[0] if (dims == 2 and prob.ndim == 3) else 1
        console.print(
            f"wrote {output} {prob.shape} float32 in {seconds:.1f} s "
            f"({seconds / slices:.2f} s per slice on {predictor.device})"
        )


def _check_memory(config, image, predictor) -> None:
    """Refuse a tile (at the batch size) that would exhaust the device's memory, up front."""
    from unetcore.memory import check_tile, device_budget
    from unetcore.predict import plan_tiles

    dims = config.spatial_dims
    tile = plan_tiles(config, image.shape[-dims:], predictor.config.tile_shape, predictor.config).in_tile
    cuda = predictor.device.type == "cuda"
    check_tile(
        config, tile, batch=predictor.config.batch_size, budget=device_budget(str(predictor.device)),
        where=f"this machine ({predictor.device})", bytes_per_element=2 if cuda and predictor.config.amp else 4,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
