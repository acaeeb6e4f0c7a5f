"""One block of a plan: read (with the mirror at the volume's edge), predict, write, mark done.

Tasks carry addresses, never arrays: a `BlockJob` is the plan (URLs, shapes) and a block id,
JSON-serialisable; a worker reads its own input and writes its own chunk-aligned output.
No two blocks touch one chunk, so writes need no locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.execute import BlockOps, RetryPolicy, run_group
from pipeline.geometry import Roi
from pipeline.ledger import Ledger
from pipeline.output import Output, OutputOptions, create_output
from pipeline.plan import SegmentPlan
from pipeline.volume import Volume, open_volume


@dataclass(frozen=True)
class BlockJob:
    """An address of work: the plan and one block id (JSON via `to_dict`/`from_dict`)."""

    plan: SegmentPlan
    block_id: int

    def __post_init__(self) -> None:
        self.plan.block_index(self.block_id)  # validates the id

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "block_id": int(self.block_id)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockJob:
        return cls(SegmentPlan.from_dict(dict(data["plan"])), int(data["block_id"]))


def mirror_indices(begin: int, end: int, size: int) -> np.ndarray:
    """Source indices of positions ``begin..end-1`` with the axis [0, size) mirrored at both
    edges, edge voxel repeated (numpy "symmetric"), repeating with period ``2·size``::

        index:  -3 -2 -1 | 0 1 2 3 | 4 5 6
        source:  2  1  0 | 0 1 2 3 | 3 2 1
    """
    if size < 1:
        raise ValueError(f"expected a non-empty axis, got size {size}")
    i = np.arange(begin, end) % (2 * size)
    return np.where(i < size, i, 2 * size - 1 - i)


def read_roi_mirrored(volume: Volume, roi: Roi) -> np.ndarray:
    """The voxels of ``roi``; where it leaves the volume, the volume mirrored at its edge.

    Reads only the part of the volume the region (and its mirror image) needs. The result
    equals cropping ``numpy.pad(volume, ..., mode="symmetric")``, which is what
    `unetcore.predict.TilePredictor` pads a whole image with.
    """
    inside = roi.intersect(volume.total_roi)
    if inside == roi:
        return volume.read(roi)
    index = [mirror_indices(b, e, n) for b, e, n in zip(roi.begin, roi.end, volume.shape, strict=True)]
    lo = [int(i.min()) for i in index]
    hi = [int(i.max()) + 1 for i in index]
    source = volume.read(Roi(lo, [h - low for h, low in zip(hi, lo, strict=True)]))
    return source[np.ix_(*[i - low for i, low in zip(index, lo, strict=True)])]


def read_block(plan: SegmentPlan, block_id: int, volume: Volume) -> np.ndarray:
    """The block's read region (input dtype), mirrored only where it leaves the volume."""
    if tuple(volume.shape) != tuple(plan.volume_shape):
        raise ValueError(f"expected a volume of shape {plan.volume_shape} for this plan, got {volume.shape}")
    return read_roi_mirrored(volume, plan.block(block_id).read_roi)


def predict_block(data: np.ndarray, plan: SegmentPlan, block_id: int, predictor: Any,
                  out_dtype: str = "float32") -> np.ndarray:
    """float32 cell probability of the block's write region from its read region ``data``.

    2D model: all z slices of the block go to ``predictor.predict_region`` at once (they
    share batches), with the (y, x) context. 3D model: one 3D region. ``out_dtype="uint8"``
    (`Output.device_dtype`): round(p·255) as uint8, quantised on the predictor's device.
    """
    block = plan.block(block_id)
    if tuple(data.shape) != tuple(block.read_roi.shape):
        raise ValueError(f"expected data of the read region's shape {tuple(block.read_roi.shape)}, got {data.shape}")
    lo, hi = block.context_lo, block.context_hi
    axes = slice(1, None) if plan.model_dims == 2 else slice(None)
    frame = _tta_frame(plan, block, predictor, axes)
    if out_dtype != "float32":
        frame["out_dtype"] = out_dtype
    if plan.model_dims == 2:
        if lo[0] or hi[0]:
            raise ValueError(f"expected no z context for a 2D model, got {lo[0]}, {hi[0]}")
        slices = predictor.predict_region(list(data), tuple(lo[1:]), tuple(hi[1:]), **frame)
        result = np.stack(slices)
    else:
        result = predictor.predict_region([data], tuple(lo), tuple(hi), **frame)[0]
    if tuple(result.shape) != tuple(block.write_roi.shape):
        raise ValueError(f"expected a prediction of shape {tuple(block.write_roi.shape)}, got {result.shape}")
    return result.astype(np.dtype(out_dtype), copy=False)


def _tta_frame(plan: SegmentPlan, block: Any, predictor: Any, axes: slice) -> dict[str, Any]:
    """With test-time augmentation, where the block sits in the volume (its views are tiled
    as the whole volume's are, `unetcore.tta`), after checking that the plan's context
    covers every view; nothing without it."""
    if not getattr(getattr(predictor, "config", None), "tta", False):
        return {}
    from pipeline.plan import model_context

    need = model_context(predictor.model.config, same_context=predictor.config.same_context, tta=True)
    if any(h < n for have, needed in zip(plan.context, need, strict=True) for h, n in zip(have, needed, strict=True)):
        raise ValueError(
            f"expected a plan made for test-time augmentation (context {need}), got context {plan.context}; "
            "make the plan with tta=True (make_plan, plan_for_volume)"
        )
    return {"origin": tuple(block.write_roi.offset[axes]), "extent": tuple(plan.volume_shape[axes])}


def write_block(result: np.ndarray, plan: SegmentPlan, block_id: int, output: Output) -> None:
    """Write the block's chunks (and only them: blocks are chunk-aligned and disjoint)."""
    output.write(plan.block(block_id).write_roi, result)


def open_input(plan: SegmentPlan, *, sparse: bool = False, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The plan's input at its level (None and 0: the array itself), read through a chunk
    cache (`pipeline.chunkcache`): what every block path reads."""
    from pipeline.chunkcache import CachedVolume

    level = plan.input_level if plan.input_level not in (None, 0) else None
    return CachedVolume(open_volume(plan.input_url, level=level, sparse=sparse, storage_options=storage_options))


def roi_dict(roi: Roi) -> dict[str, list[int]]:
    return {"offset": list(roi.offset), "shape": list(roi.shape)}


def block_ops(plan: SegmentPlan, volume: Any, output: Output, ledger: Ledger | None,
              compute: Callable[[int, Any], Any]) -> BlockOps:
    """The stages of a segmentation block, run by `pipeline.execute.run_group`: the one
    definition behind both the Dask task (`pipeline.segment.segment_ops`) and the
    in-process `run_plan_locally`. ``compute(block_id, data)``: usually `predict_block`."""

    def describe(block_id: int) -> dict[str, Any]:
        block = plan.block(block_id)
        return {"write_roi": roi_dict(block.write_roi), "read_roi": roi_dict(block.read_roi)}

    return BlockOps(
        read=lambda b: read_block(plan, b, volume),
        compute=compute,
        write=lambda b, result: write_block(result, plan, b, output),
        mark_done=None if ledger is None else ledger.mark_done,
        mark_failed=None if ledger is None else (lambda b, exc: ledger.mark_failed(b, exc, plan.block(b).write_roi)),
        describe=describe,
        voxels=lambda b: plan.block(b).write_roi.size,
    )


class BlockFailedError(RuntimeError):
    """Blocks of an in-process run failed (each is in the ledger; ``resume=True`` redoes them)."""


@dataclass
class LocalRun:
    """What `run_plan_locally` did: blocks computed, skipped as done, failed (id → error)."""

    computed: list[int] = field(default_factory=list)
    skipped: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def make_predictor(checkpoint: Any, predict_config: Any = None) -> Any:
    """A `TilePredictor` from a checkpoint path or a loaded `unetcore.checkpoint.Checkpoint`."""
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    return TilePredictor(ckpt.model, ckpt.normalization, predict_config or PredictConfig())


def _predictor_settings(plan: SegmentPlan, predictor: Any) -> dict[str, Any] | None:
    """The ``predict`` provenance of a real `TilePredictor` (device class, precision, the
    tile of a whole block, tta); None for another object."""
    from pipeline.resume import predict_settings
    from unetcore.predict import TilePredictor, plan_tiles

    if not isinstance(predictor, TilePredictor):
        return None
    config, dims = predictor.config, predictor.dims
    tile = plan_tiles(predictor.model.config, tuple(plan.block_shape[-dims:]), config.tile_shape, config).in_tile
    return {"predict": predict_settings(tta=config.tta, devices=[str(predictor.device)], amp=config.amp, tile=tile,
                                        compile=config.compile)}


def run_plan_locally(
    plan: SegmentPlan,
    checkpoint: Any = None,
    *,
    predictor: Any = None,
    predict_config: Any = None,
    options: OutputOptions = OutputOptions(),
    resume: bool = False,
    overwrite: bool = False,
    allow_mismatch: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    input_storage_options: Mapping[str, Any] | None = None,
    block_ids: Iterable[int] | None = None,
    raise_on_error: bool = True,
) -> LocalRun:
    """Run a plan in this process through the workers' engine (`run_group`: read, compute and
    write overlapped, the same stages as `pipeline.segment`'s Dask task): tests, and the
    bare-model baseline.

    ``checkpoint``: a path or a loaded `Checkpoint` (its hash and config go into the
    provenance, with the predictor's settings); or pass a ready ``predictor``. ``resume``
    skips blocks the ledger has as done (after `pipeline.resume`'s checks; ``allow_mismatch``
    lets differing settings through); ``block_ids`` restricts the run (e.g. to simulate an
    interrupted run). Every block is attempted; with ``raise_on_error`` a run with failures
    then raises `BlockFailedError` (the failures are in the ledger and the result).
    """
    if predictor is None:
        if checkpoint is None:
            raise ValueError("expected a checkpoint or a predictor, got neither")
        predictor = make_predictor(checkpoint, predict_config)
    model_config = getattr(getattr(predictor, "model", None), "config", None)
    output = create_output(
        plan,
        options,
        model_config=model_config.to_dict() if model_config is not None else None,
        resume=resume,
        overwrite=overwrite,
        allow_mismatch=allow_mismatch,
        storage_options=storage_options,
        extra_attrs=_predictor_settings(plan, predictor),
    )
    volume = open_input(plan, storage_options=input_storage_options)
    ledger = Ledger(plan.output_url, plan.num_blocks, storage_options)
    ids = list(plan.block_ids() if block_ids is None else block_ids)
    todo = list(ledger.pending_ids(ids)) if resume else ids
    run = LocalRun(skipped=len(ids) - len(todo))
    start = time.perf_counter()
    ops = block_ops(plan, volume, output, ledger,
                    lambda b, data: predict_block(data, plan, b, predictor, output.device_dtype(predictor)))
    report = run_group(todo, ops, RetryPolicy())
    run.computed = sorted(report.done)
    run.failed = {f.block_id: f.error for f in sorted(report.failed, key=lambda f: f.block_id)}
    if run.failed and raise_on_error:
        first = next(iter(run.failed.items()))
        raise BlockFailedError(
            f"expected every block to succeed, got {len(run.failed)} failure(s) (first: block {first[0]}: {first[1]}); "
            "each is recorded in the ledger: fix the cause and run again with resume=True"
        )
    run.seconds = time.perf_counter() - start
    return run
