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


def predict_block(data: np.ndarray, plan: SegmentPlan, block_id: int, predictor: Any) -> np.ndarray:
    """float32 cell probability of the block's write region from its read region ``data``.

    2D model: all z slices of the block go to ``predictor.predict_region`` at once (they
    share batches), with the (y, x) context. 3D model: one 3D region.
    """
    block = plan.block(block_id)
    if tuple(data.shape) != tuple(block.read_roi.shape):
        raise ValueError(f"expected data of the read region's shape {tuple(block.read_roi.shape)}, got {data.shape}")
    lo, hi = block.context_lo, block.context_hi
    axes = slice(1, None) if plan.model_dims == 2 else slice(None)
    frame = _tta_frame(plan, block, predictor, axes)
    if plan.model_dims == 2:
        if lo[0] or hi[0]:
            raise ValueError(f"expected no z context for a 2D model, got {lo[0]}, {hi[0]}")
        slices = predictor.predict_region(list(data), tuple(lo[1:]), tuple(hi[1:]), **frame)
        result = np.stack(slices)
    else:
        result = predictor.predict_region([data], tuple(lo), tuple(hi), **frame)[0]
    if tuple(result.shape) != tuple(block.write_roi.shape):
        raise ValueError(f"expected a prediction of shape {tuple(block.write_roi.shape)}, got {result.shape}")
    return result.astype(np.float32, copy=False)


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


def run_block(
    plan: SegmentPlan,
    block_id: int,
    volume: Volume,
    predictor: Any,
    output: Output,
    ledger: Ledger | None = None,
) -> float:
    """write(predict(read)), then mark the block done; returns the seconds it took.

    A failure is recorded in the ledger (block id, ROI, error) and re-raised, so the caller
    decides about retries; a later success supersedes the failure.
    """
    start = time.perf_counter()
    try:
        data = read_block(plan, block_id, volume)
        write_block(predict_block(data, plan, block_id, predictor), plan, block_id, output)
    except Exception as exc:
        if ledger is not None:
            ledger.mark_failed(block_id, exc, plan.block(block_id).write_roi)
        raise
    seconds = time.perf_counter() - start
    if ledger is not None:
        ledger.mark_done(block_id, seconds=round(seconds, 3))
    return seconds


@dataclass
class LocalRun:
    """What `run_plan_locally` did: blocks computed, skipped as done, failed."""

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
    return {"predict": predict_settings(tta=config.tta, devices=[str(predictor.device)], amp=config.amp, tile=tile)}


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
    stop_on_error: bool = True,
    on_block: Callable[[int, float], None] | None = None,
) -> LocalRun:
    """Run a plan block by block in this process (tests, and the bare-model baseline).

    ``checkpoint``: a path or a loaded `Checkpoint` (its hash and config go into the
    provenance, with the predictor's settings); or pass a ready ``predictor``. ``resume``
    skips blocks the ledger has as done (after `pipeline.resume`'s checks; ``allow_mismatch``
    lets differing settings through); ``block_ids`` restricts the run (e.g. to simulate an
    interrupted run).
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
    level = plan.input_level if plan.input_level not in (None, 0) else None
    volume = open_volume(plan.input_url, level=level, storage_options=input_storage_options)
    ledger = Ledger(plan.output_url, plan.num_blocks, storage_options)
    ids = list(plan.block_ids() if block_ids is None else block_ids)
    todo = list(ledger.pending_ids(ids)) if resume else ids
    run = LocalRun(skipped=len(ids) - len(todo))
    start = time.perf_counter()
    for block_id in todo:
        try:
            seconds = run_block(plan, block_id, volume, predictor, output, ledger)
        except Exception as exc:
            run.failed[block_id] = f"{type(exc).__name__}: {exc}"
            if stop_on_error:
                raise
            continue
        run.computed.append(block_id)
        if on_block is not None:
            on_block(block_id, seconds)
    run.seconds = time.perf_counter() - start
    return run
