"""`segment_volume`: a Zarr EM volume → an OME-Zarr cell probability, on Dask, as one flow.

Prefect sees five stages; the per-block loop lives in Dask (`pipeline.segment`), never in
Prefect (thousands of task runs would swamp it, prefect#12877)::

    validate-inputs ─► plan-blocks ─► run-blocks ─► verify-ledger ─► evaluate-output
    (URLs, model,      (block grid,   (Dask: read →   (done / failed    (ISBI metrics vs the
     output policy)     what is left)  predict → write) from the ledger)  ground truth, if given)
                                                              │
                               artifacts: segment-summary (markdown), segment-metrics (table)

Stages retry only transient errors (`flows._common.retry_on_transient`); a retried
`run-blocks` resumes from the ledger instead of starting over. Blocks that fail for good
make the flow fail with their ids, coordinates and causes, after the summary is published.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.dtypes import OUTPUT_DTYPES
from flows._common import ClusterParams, attempt, every, flow_start, made_since, metric_line, metric_rows, quiet_dask, retry_on_transient, run_logger

# SegmentConfig fields a flow run may set; the rest come from EMUNET_SEGMENT_* or defaults.
CONFIG_FIELDS = frozenset(
    {"block_shape", "tile_shape", "batch_size", "dtype", "mask", "device", "resume", "overwrite",
     "pyramid_levels", "input_level", "blocks_per_task", "max_in_flight", "check_finite", "sparse", "grey_range", "tta",
     "compile", "allow_mismatch"}
)  # fmt: skip


class BlocksFailedError(RuntimeError):
    """Some blocks failed for good; the message names each one (id, coordinates, cause).

    In process, ``result`` (`SegmentResult.to_dict()`) and ``ledger`` (`LedgerSummary.to_dict()`)
    come with it, for callers that report more (the CLI prints a table).
    """

    def __init__(self, message: str, result: dict[str, Any] | None = None, ledger: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result, self.ledger = result, ledger


class SegmentVolumeParams(BaseModel):
    """What to segment, with which model, where, and how.

    Optional fields left unset (None) are chosen by the pipeline: block shape from the
    model's lattice and the output chunks, tile from the model, cluster = one local worker
    per GPU. Fields not given at all fall back to ``EMUNET_SEGMENT_<NAME>`` on the machine
    running the flow, then to `pipeline.segment.SegmentConfig`'s defaults (shown here).
    """

    model_config = ConfigDict(extra="forbid")

    input_url: str = Field(description="Input Zarr volume (z, y, x): a path, file:// or s3:// URL, an array or an OME-Zarr image.")
    output_url: str = Field(description="Output OME-Zarr group: probability, optional mask, coordinates, ledger.")
    checkpoint: str = Field(description="Model checkpoint (.safetensors) readable by the flow and every Dask worker.")
    block_shape: tuple[int, int, int] | None = Field(
        None, description="Voxels per block (z, y, x); None = (4, 1024, 1024) in chunks of (4, 512, 512) for 2D models, aligned."
    )
    tile_shape: tuple[int, ...] | None = Field(None, description="Model input tile (a legal size); None = one per block plane, up to 1024² kept voxels.")
    batch_size: int = Field(4, ge=1, description="Tiles per forward pass, at most (fewer of large tiles on a CPU).")
    dtype: Literal[OUTPUT_DTYPES] = Field(  # type: ignore[valid-type]
        "uint8", description="Stored probability: uint8 = round(p·255), float16 or float32."
    )
    mask: bool = Field(False, description="Also store mask = p ≥ 0.5.")
    cluster: ClusterParams = Field(default_factory=ClusterParams, description="A running Dask scheduler, or N local workers.")
    device: str = Field("auto", description="Device on each worker: auto, cpu or cuda.")
    resume: bool = Field(False, description="Continue an existing output: skip the blocks its ledger has as done.")
    allow_mismatch: bool = Field(
        False, description="With resume: continue although the settings that change the numbers differ (recorded in the output)."
    )
    overwrite: bool = Field(False, description="Replace an existing output.")
    pyramid_levels: int = Field(0, ge=0, description="2× (y, x) mean pyramid levels written after the blocks.")
    input_level: int | None = Field(None, ge=0, description="Multiscale level of an OME-Zarr input (default 0).")
    blocks_per_task: int | None = Field(None, ge=1, description="Consecutive blocks per Dask task (default: 8 to 64, as many as make about 16.8 M output voxels).")
    max_in_flight: int | None = Field(None, ge=1, description="Dask tasks alive at once (default 3 × GPU slots).")
    check_finite: bool = Field(True, description="Scan a float input for NaN/inf before writing (refused if found).")
    sparse: bool = Field(False, description="Input chunks missing from the store read as the fill value (else their blocks fail).")
    grey_range: tuple[float, float] | None = Field(
        None, description="Input values mapped to the model's [0, 1]; None = stored with the volume, else the dtype's range."
    )
    tta: bool = Field(False, description="Mean over the 8 flips/rotations of the (y, x) plane (test-time augmentation): 8× the model time.")
    compile: bool = Field(False, description="torch.compile the model on each worker: meant for GPUs (on a CPU it measured no faster than the eager channels-last model); probabilities within ~1e-4, a compile at the start.")
    ground_truth_url: str | None = Field(None, description="Labels (0 = membrane, > 0 = cell; Zarr or TIFF) for the ISBI metrics.")
    retries: int = Field(2, ge=0, description="Retries of a stage after a transient error (I/O, timeouts, connections).")
    progress_interval_s: float = Field(10.0, gt=0, description="Seconds between progress lines in the run log.")

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> SegmentVolumeParams:
        if self.resume and self.overwrite:
            raise ValueError("Expected at most one of resume and overwrite. Got both instead.")
        return self

    def segment_config(self, **changes: Any) -> Any:
        """The `SegmentConfig` of this run (fields given here, then the environment)."""
        from pipeline.segment import SegmentConfig

        given = self.model_dump(include=set(CONFIG_FIELDS), exclude_unset=True, exclude_none=True)
        given.update(self.cluster.model_dump(exclude_none=True))
        return SegmentConfig.from_env(**{**given, "progress": False, **changes})

    @classmethod
    def from_segment_config(cls, input_url: str, output_url: str, checkpoint: str, config: Any, **more: Any) -> SegmentVolumeParams:
        """Parameters from a `SegmentConfig` (what `emunet segment` builds)."""
        values = {name: getattr(config, name) for name in CONFIG_FIELDS}
        cluster = ClusterParams(scheduler=config.scheduler, workers=config.workers)
        return cls(input_url=str(input_url), output_url=str(output_url), checkpoint=str(checkpoint), cluster=cluster,
                   **{k: v for k, v in values.items() if v is not None}, **more)  # fmt: skip


def _stage(name: str):
    return task(name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[1, 5, 30])


# --------------------------------------------------------------------------- stages


@_stage("validate-inputs")
def validate_inputs(params: SegmentVolumeParams) -> dict[str, Any]:
    """Open the input and the checkpoint, check the ground truth and the output policy."""
    from pipeline.ownership import check_em_input, check_output
    from pipeline.volume import open_volume, redact_url
    from unetcore.checkpoint import inspect_checkpoint

    from flows._common import shape_of

    log = run_logger()
    header, sha256 = inspect_checkpoint(params.checkpoint)  # one read; refuses pickles and truncated files
    volume = open_volume(params.input_url, level=params.input_level)
    check_em_input(params.input_url)
    log.info(
        f"input {redact_url(volume.url)}: {tuple(volume.shape)} {volume.dtype}, chunks {tuple(volume.chunks)}, "
        f"voxel {tuple(volume.voxel_size)} nm; model {header['model_config'].get('spatial_dims')}D from {params.checkpoint}"
    )
    if params.ground_truth_url:
        gt_shape = _stack_shape(shape_of(params.ground_truth_url, "labels"))
        if gt_shape != tuple(volume.shape):
            raise ValueError(
                f"Expected ground truth of the input's shape {tuple(volume.shape)}. Got {gt_shape} at "
                f"{redact_url(params.ground_truth_url)} instead."
            )
    check_output(
        params.output_url, reads=(params.input_url, params.checkpoint, params.ground_truth_url),
        overwrite=params.overwrite, resume=params.resume, kind="segment",
    )  # fmt: skip
    model = header["model_config"]
    return {
        "input_url": redact_url(volume.url),
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "voxel_size_nm": list(volume.voxel_size),
        "checkpoint": params.checkpoint,
        "checkpoint_sha256": sha256,
        "model": {k: model.get(k) for k in ("spatial_dims", "depth", "base_channels", "padding", "upsampling")},
        "model_config": model,  # for plan-blocks: the checkpoint is not read again
    }


def _stack_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *shape) if len(shape) == 2 else tuple(shape)


@_stage("plan-blocks")
def plan_blocks(params: SegmentVolumeParams, sha256: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """The block grid `pipeline.segment` will run (same planner), and what is left to do.

    ``model_config``: the checkpoint header's, as `validate_inputs` read it."""
    from pipeline.ledger import Ledger
    from pipeline.output import store_exists
    from pipeline.plan import plan_for_volume
    from pipeline.prepare import planned_layout
    from pipeline.volume import open_volume
    from unetcore.config import UNetConfig

    config = params.segment_config()
    volume = open_volume(params.input_url, level=config.input_level)
    plan = plan_for_volume(volume, params.output_url, UNetConfig.from_dict(model_config), checkpoint_sha256=sha256, tta=config.tta,
                           **planned_layout(config, params.output_url))  # fmt: skip
    done = 0
    if config.resume and store_exists(params.output_url):
        done = int(Ledger(plan.output_url, plan.num_blocks).done_mask().sum())
    summary = {
        "num_blocks": plan.num_blocks,
        "block_shape": list(plan.block_shape),
        "grid_shape": list(plan.grid_shape),
        "context": [list(c) for c in plan.context],
        "done": done,
        "todo": plan.num_blocks - done,
    }
    run_logger().info(
        f"plan: {plan.num_blocks} block(s) of {tuple(plan.block_shape)} (grid {tuple(plan.grid_shape)}), "
        f"context {summary['context']}; {summary['todo']} to do"
    )
    return summary


@_stage("run-blocks")
def run_blocks(params: SegmentVolumeParams, sha256: str, num_blocks: int, since: str | None = None) -> dict[str, Any]:
    """All blocks on Dask via `pipeline.segment.segment`; progress lines from the ledger."""
    import time

    from pipeline.ledger import Ledger
    from pipeline.segment import describe_result, segment

    log = run_logger()
    changes: dict[str, Any] = {"checkpoint_sha256": sha256}
    if attempt() > 1 and made_since(params.output_url, since):  # this run's output: continue it, never wipe it
        changes.update(resume=True, overwrite=False)
        log.info(f"attempt {attempt()}: resuming from the ledger")
    config = params.segment_config(**changes)
    start, seen = time.perf_counter(), [-1]

    def progress() -> None:
        done = int(Ledger(params.output_url, num_blocks).done_mask().sum())
        if done != seen[0]:
            seen[0] = done
            log.info(f"{done}/{num_blocks} blocks done after {time.perf_counter() - start:.0f} s")

    with every(params.progress_interval_s, progress), quiet_dask():
        result = segment(params.input_url, params.output_url, params.checkpoint, config)
    log.info(describe_result(result))
    return result.to_dict()


@_stage("verify-ledger")
def verify_ledger(output_url: str) -> dict[str, Any]:
    """Done/total and the failed blocks (id, write ROI, cause) from the output's ledger."""
    from pipeline.ledger import Ledger

    summary = Ledger.open(output_url).summary().to_dict()
    run_logger().info(f"ledger: {summary['done']}/{summary['total']} blocks done, {len(summary['failed'])} failed")
    return summary


@_stage("evaluate-output")
def evaluate_output(output_url: str, ground_truth_url: str) -> dict[str, float]:
    """Slice-wise ISBI 2012 metrics of the probability read back from the output Zarr.

    The stored values go to the metrics as they are (uint8 = p·255 is scaled there in
    float64), exactly as `emunet evaluate OUT.zarr GT` reads them: converting to float32
    first moved values that sit on a threshold of the sweeps and changed the warping error.
    """
    import numpy as np

    from pipeline.output import open_output

    from flows._common import as_stack, isbi_scores, read_any

    output = open_output(output_url, mode="r")
    probability = np.asarray(output.array(output.options.name)[...])  # stored dtype, (z, y, x)
    labels = as_stack(read_any(ground_truth_url, "labels"))
    scores = isbi_scores(probability, labels)
    run_logger().info(f"metrics over {probability.shape[0]} slice(s): {metric_line(scores)}")
    return scores


# --------------------------------------------------------------------------- reporting


def failure_message(ledger: dict[str, Any], limit: int = 10) -> str:
    """'k of n blocks failed: block 5 at offset …, shape …: OSError: …; …' (from the ledger)."""
    failed = ledger["failed"]
    parts = []
    for f in failed[:limit]:
        roi = f.get("write_roi") or {}
        where = f" at offset {roi.get('offset')}, shape {roi.get('shape')}" if roi else ""
        parts.append(f"block {f['block_id']}{where}: {f['error']}")
    more = f"; and {len(failed) - limit} more" if len(failed) > limit else ""
    missing = ledger["total"] - ledger["done"] - len(failed)
    unaccounted = f"; {missing} block(s) not done and not marked failed" if missing > 0 else ""
    return (
        f"{ledger['total'] - ledger['done']} of {ledger['total']} blocks not done: {'; '.join(parts)}{more}{unaccounted}. "
        "Fix the cause and rerun with resume=True (emunet segment --resume) to compute only those."
    )


def xarray_snippet(output_url: str, dtype: str) -> str:
    """How to open the output in xarray (coordinates in nm; the data stays lazy until used)."""
    scale = " / 255.0  # uint8 stores round(p · 255)" if dtype == "uint8" else "  # the cell probability p"
    return (
        "import xarray as xr\n\n"
        f'ds = xr.open_zarr("{output_url}", consolidated=False)\n'
        f'prob = ds["probability"]{scale}\n'
        "first = prob.isel(z=0).compute()  # one slice in memory; z, y, x in nm\n"
        "print(float(first.mean()))"
    )


def summary_markdown(
    params: SegmentVolumeParams,
    info: dict[str, Any],
    plan: dict[str, Any],
    result: dict[str, Any],
    ledger: dict[str, Any],
    scores: dict[str, float] | None,
) -> str:
    from pipeline.volume import redact_url

    out = redact_url(params.output_url)
    status = "complete" if ledger["complete"] else f"{ledger['total'] - ledger['done']} block(s) not done"
    lines = [
        f"# segment-volume: {status}",
        "",
        "| | |",
        "|---|---|",
        f"| input | `{info['input_url']}`: {tuple(info['shape'])} {info['dtype']}, voxel {tuple(info['voxel_size_nm'])} nm |",
        f"| model | `{params.checkpoint}` (sha256 {info['checkpoint_sha256'][:12]}…, {info['model']['spatial_dims']}D"
        f"{', test-time augmentation over 8 views' if params.tta else ''}) |",
        f"| output | `{out}`: probability {params.dtype}{', mask' if params.mask else ''} |",
        f"| blocks | {result['computed']} written, {result['skipped']} skipped, {len(result['failed'])} failed of "
        f"{result['total_blocks']}; block {tuple(plan['block_shape'])} |",
        f"| speed | {result['voxels_per_second'] / 1e6:.3f} Mvox/s end to end ({result['seconds']:.1f} s), "
        f"{result['steady_voxels_per_second'] / 1e6:.3f} Mvox/s steady, {result['slots']} slot(s) on {result['cluster']} |",
        f"| ledger | {ledger['done']}/{ledger['total']} done (`emunet status {out}`) |",
    ]
    if scores:
        lines.append(f"| metrics | {metric_line(scores)} |")
    lines += ["", "## Open the result", "", "```python", xarray_snippet(out, params.dtype), "```"]
    if ledger["failed"]:
        lines += ["", "## Failed blocks", "", "| block | write offset | shape | error |", "|---|---|---|---|"]
        for f in ledger["failed"][:50]:
            roi = f.get("write_roi") or {}
            error = str(f["error"]).replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {f['block_id']} | {roi.get('offset', '')} | {roi.get('shape', '')} | {error} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the flow


@flow(name="segment-volume", log_prints=False)
def segment_volume(params: SegmentVolumeParams) -> dict[str, Any]:
    """Segment a Zarr volume block by block on Dask; publish a summary and the metrics."""
    log = run_logger()
    retry = {"retries": params.retries}
    since = flow_start()
    info = validate_inputs.with_options(**retry)(params)
    plan = plan_blocks.with_options(**retry)(params, info["checkpoint_sha256"], info["model_config"])
    result = run_blocks.with_options(**retry)(params, info["checkpoint_sha256"], plan["num_blocks"], since)
    ledger = verify_ledger.with_options(**retry)(params.output_url)
    scores = None
    if ledger["complete"] and params.ground_truth_url:
        scores = evaluate_output.with_options(**retry)(params.output_url, params.ground_truth_url)
        create_table_artifact(
            metric_rows(scores), key="segment-metrics",
            description=f"ISBI 2012 metrics of {params.output_url} against {params.ground_truth_url} (lower is better)",
        )  # fmt: skip
    create_markdown_artifact(summary_markdown(params, info, plan, result, ledger, scores), key="segment-summary",
                             description=f"segment-volume → {params.output_url}")  # fmt: skip
    if not ledger["complete"]:
        raise BlocksFailedError(failure_message(ledger), result, ledger)
    log.info(f"done: {params.output_url} ({result['computed']} block(s) written, {result['seconds']:.1f} s)")
    return {"output_url": params.output_url, "input": info, "plan": plan, "result": result,
            "ledger": {k: ledger[k] for k in ("done", "total", "complete")}, "metrics": scores}  # fmt: skip
