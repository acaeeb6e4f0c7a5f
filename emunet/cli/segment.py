"""`emunet segment`: cell probability for a whole Zarr volume, block by block on Dask."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.dtypes import OUTPUT_DTYPES
from emunet.cli.common import TILE_HELP, interrupted, console, echo_json, expand_tile, parse_tile, print_failures, print_warnings, scheduler_lost, user_errors


Dtype = Enum("Dtype", {name: name for name in OUTPUT_DTYPES}, type=str)  # pipeline.dtypes, the one list


def segment(
    input: Annotated[str, typer.Argument(metavar="IN.zarr", help="Input Zarr volume: a path or URL, an array or an OME-Zarr image.")],
    output: Annotated[str, typer.Argument(metavar="OUT.zarr", help="Output OME-Zarr group (probability, optional mask, ledger).")],
    model: Annotated[Path, typer.Option(help="Checkpoint (.safetensors).")],
    workers: Annotated[Optional[int], typer.Option(help="Local workers to start (default: one per GPU, 2 on a CPU; at most one per core or GPU).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running Dask scheduler, e.g. tcp://host:8786.")] = None,
    block: Annotated[Optional[tuple[int, int, int]], typer.Option(metavar="Z Y X", help="Block shape in voxels (default 4 1024 1024 in chunks of 4 512 512, aligned; with --resume, the output's own).")] = None,
    tile: Annotated[Optional[str], typer.Option(metavar="SIZE|Y,X", help=TILE_HELP + "; default: one tile per block plane (up to 1024² kept voxels) that fits the workers' memory.")] = None,
    batch_size: Annotated[int, typer.Option(envvar="EMUNET_SEGMENT_BATCH_SIZE", help="Tiles per forward pass, at most (on a CPU, at most 2.2 M input pixels per pass).")] = 4,
    dtype: Annotated[Dtype, typer.Option(envvar="EMUNET_SEGMENT_DTYPE", help="Stored probability: uint8 = p·255, float16 or float32.")] = Dtype.uint8,
    mask: Annotated[bool, typer.Option("--mask", help="Also store mask = p ≥ 0.5.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an existing output (skip blocks done).")] = False,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch", help="With --resume: continue although the checkpoint, device class, precision, tile, input level, grey range, --tta or --compile differ from the output's (the differences are recorded in its provenance).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing emunet output (never anything emunet did not write).")] = False,
    pyramid: Annotated[int, typer.Option(envvar="EMUNET_SEGMENT_PYRAMID_LEVELS", help="2× (y, x) mean pyramid levels written at the end.")] = 0,
    max_in_flight: Annotated[Optional[int], typer.Option(envvar="EMUNET_SEGMENT_MAX_IN_FLIGHT", help="Tasks submitted at once (default 3 × GPU slots).")] = None,
    blocks_per_task: Annotated[Optional[int], typer.Option(envvar="EMUNET_SEGMENT_BLOCKS_PER_TASK", min=1, help="Consecutive blocks per task (I/O overlaps compute inside); default: 8 to 64, as many as make about 16.8 M output voxels, i.e. 8 blocks of 8×512×512 or of the default 4×1024×1024.")] = None,
    device: Annotated[str, typer.Option(envvar="EMUNET_SEGMENT_DEVICE", help="Device on each worker: auto, cpu or cuda.")] = "auto",
    check_finite: Annotated[bool, typer.Option("--check-finite/--no-check-finite", help="Scan a float input for NaN/inf first (refuse it); off: fail only the blocks that read them.")] = True,
    grey_range: Annotated[Optional[tuple[float, float]], typer.Option(metavar="LO HI", help="Input values mapped to the model's [0, 1] (default: stored with the volume, else the dtype's range: uint8 0 255, uint16 0 65535, float 0 1).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Test-time augmentation: the mean over the 8 flips/rotations of the (y, x) plane (8× the model time).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model on each worker: meant for GPUs; on a CPU it measured no faster than the default eager channels-last model (0.83–1.01×) (bench/bench_compile.py); probabilities within ~1e-4 of the uncompiled model's; each worker compiles once at the start (~10–60 s).")] = False,
    sparse: Annotated[bool, typer.Option("--sparse", help="Input chunks missing from the store read as the fill value (default: a block that needs one fails, naming it).")] = False,
    instances: Annotated[bool, typer.Option("--instances", help="Then neuron instances: `neuron_ids` (uint64) in OUT.zarr from the probability map, on the same workers (the defaults of `emunet agglomerate`; another threshold later: `emunet agglomerate OUT.zarr --resume --labels-threshold T`).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")] = False,
    ground_truth: Annotated[Optional[str], typer.Option(help="Labels (Zarr or TIFF; 0 = membrane, >0 = cell): ISBI metrics of the result (with --flow).")] = None,
    flow: Annotated[bool, typer.Option("--flow/--no-flow", help="Run as the Prefect flow segment-volume (run log, retries, artifacts); --no-flow calls the pipeline directly.")] = True,
) -> None:
    """Predict every block of IN.zarr into OUT.zarr with the overlap-tile strategy.

    Options may also come from EMUNET_SEGMENT_<NAME> variables (the command line wins).

    Exit codes: 0 all blocks done, 1 some blocks failed (listed; rerun with --resume),
    2 a usage or input error, 3 the Dask scheduler was lost mid-run (rerun with --resume),
    130 interrupted by Ctrl-C (rerun with --resume).
    """
    with user_errors(), scheduler_lost():
        from pipeline.segment import SegmentConfig, describe_result
        from pipeline.segment import segment as run_segment

        if workers is not None and scheduler is not None:
            raise ValueError(f"expected --workers or --scheduler, got both ({workers}, {scheduler!r})")
        tile_shape = parse_tile(tile)
        if tile_shape is not None:
            from unetcore.checkpoint import read_header

            tile_shape = expand_tile(tile_shape, int(read_header(model)["model_config"].get("spatial_dims", 2)))
        given = {
            "block_shape": block,
            "tile_shape": tile_shape,
            "batch_size": batch_size,
            "dtype": dtype.value,
            "mask": mask,
            "resume": resume,
            "allow_mismatch": allow_mismatch or None,
            "overwrite": overwrite,
            "pyramid_levels": pyramid,
            "workers": workers,
            "scheduler": scheduler,
            "max_in_flight": max_in_flight,
            "blocks_per_task": blocks_per_task,
            "device": device,
            "check_finite": check_finite,
            "grey_range": grey_range,
            "sparse": sparse or None,
            "tta": tta or None,
            "compile": compile or None,
            "progress": not as_json,
        }
        # Unset options fall back to EMUNET_SEGMENT_* (parsed by SegmentConfig.from_env).
        config = SegmentConfig.from_env(**{k: v for k, v in given.items() if v is not None})
        from pipeline.cluster import connect_client
        from pipeline.ownership import check_output
        from pipeline.prepare import prepare

        # Before any server or cluster starts, so that a mistake is one line within seconds:
        # the output (never into an input, never over data not ours), the input, the
        # checkpoint, the tile, the device, the workers, the scheduler's address.
        check_output(output, reads=(input, str(model), ground_truth), overwrite=config.overwrite, resume=config.resume,
                     kind="segment")
        if flow:
            prepare(input, output, model, config)
        if config.scheduler is not None:
            connect_client(config.scheduler, config.connect_timeout_s).close()  # reachable, and speaks Dask
        if flow:
            from emunet.cli.flow_commands import segment_with_flow

            try:
                code = segment_with_flow(input, output, model, config, ground_truth=ground_truth, as_json=as_json,
                                         instances=instances)
            except KeyboardInterrupt:
                code = interrupted(output)
            raise typer.Exit(code)
        if ground_truth is not None:
            raise ValueError("expected --ground-truth with --flow (the flow computes the metrics), got --no-flow")
        from pipeline.submit import SchedulerLostError

        try:
            result = run_segment(input, output, model, config)
        except KeyboardInterrupt:
            raise typer.Exit(interrupted(output)) from None
        except SchedulerLostError:
            raise  # exit 3 (scheduler_lost): not a usage error
        except (ConnectionError, TimeoutError) as exc:  # no scheduler / no GPU workers
            raise ValueError(str(exc)) from None
        found = None
        if instances and not result.failed:
            from emunet.cli.agglomerate import instances_after_segment

            try:
                found = instances_after_segment(output, config, log=None if as_json else _say)
            except KeyboardInterrupt:
                raise typer.Exit(interrupted(output)) from None
    if as_json:
        echo_json({**result.to_dict(), **({"instances": found} if instances else {})})
    else:
        console.print(describe_result(result), highlight=False, markup=False)
        print_warnings(result.warnings)
        print_failures([f.to_dict() for f in result.failed])
        if instances and result.failed:
            console.print("instances: not computed (failed blocks); rerun with --resume --instances", highlight=False)
    if result.failed:
        raise typer.Exit(code=1)


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
