"""`segment`: predict a whole Zarr volume with a checkpoint on a Dask cluster.

::

    client                                         workers (one per GPU slot)
    ──────                                         ──────────────────────────
    plan (block grid, chunk-aligned)               ModelPlugin: checkpoint hash checked,
    create_output (resume/overwrite rules)         model + TilePredictor loaded once
    ledger: skip blocks already done
    stream groups of block ids ──(≤ max_in_flight, GPU: 1)──► read → predict → write, done
    progress (blocks, voxels/s) ◄── GroupReport ─────────────┘  (failures: id, ROI, error)
    pyramid levels (optional) ──(region tasks)──────────────► 2× means of level k → level k+1
    SegmentResult (pyramid_seconds)

Never imports Prefect; `flows/` wraps this function.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cluster import connect
from pipeline.execute import BlockFailure, BlockOps, GroupReport, RetryPolicy
from pipeline.segment_config import SegmentConfig
from pipeline.submit import SchedulerLostError, default_in_flight, submit_bounded
from pipeline.worker import GroupJob, ModelPlugin, ModelSpec, hold_model, process_group, release_model

logger = logging.getLogger(__name__)

@dataclass
class SegmentResult:
    """What a run did (JSON via `to_dict`)."""

    output_url: str
    total_blocks: int  # blocks in the plan
    computed: int = 0  # blocks written in this run
    skipped: int = 0  # blocks already done (resume)
    failed: list[BlockFailure] = field(default_factory=list)
    voxels: int = 0  # output voxels written in this run
    seconds: float = 0.0  # the whole call: planning, cluster start, model load, blocks, pyramid
    pyramid_seconds: float = 0.0  # the pyramid levels on the workers (0 without --pyramid)
    run_seconds: float = 0.0  # first submission to last result
    cluster: str = ""  # "local-cpu", "local-cuda", "local-gpu" or "scheduler"
    slots: int = 0  # GPU slots (block tasks at once)
    model_loads: dict[str, int] = field(default_factory=dict)  # worker → models it has loaded
    worker_peak_rss: dict[str, int] = field(default_factory=dict)  # worker → peak RSS bytes
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage, summed
    peak_in_flight: int = 0
    blocks_per_task: int = 0  # the group size used (config's, smaller for small runs)
    plugin: str = ""  # the model plugin's name on the workers
    warnings: list[str] = field(default_factory=list)  # about the input (e.g. grey values far from the model's)
    dashboard: str = ""  # the Dask dashboard's URL while the run lasted ("" if none)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / self.seconds if self.seconds else 0.0

    @property
    def steady_voxels_per_second(self) -> float:
        return self.voxels / self.run_seconds if self.run_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [f.to_dict() for f in self.failed]
        d["ok"] = self.ok
        d["voxels_per_second"] = round(self.voxels_per_second, 1)
        d["steady_voxels_per_second"] = round(self.steady_voxels_per_second, 1)
        return d


# -- on the workers -------------------------------------------------------------------------
def segment_ops(plugin: ModelPlugin, payload: dict[str, Any]) -> BlockOps:
    """The stages of a segmentation block on a worker (`pipeline.blocks.block_ops`, as
    `run_plan_locally` runs them); what they open is cached per run in the plugin."""
    from pipeline.blocks import block_ops, open_input, predict_block
    from pipeline.ledger import Ledger
    from pipeline.output import open_output
    from pipeline.plan import SegmentPlan

    run = payload["run"]
    plan = plugin.cached((run, "plan"), lambda: SegmentPlan.from_dict(payload["plan"]))
    volume = plugin.cached((run, "volume"), lambda: open_input(plan, sparse=payload.get("sparse", False)))
    output = plugin.cached((run, "output"), lambda: open_output(plan.output_url))
    ledger = plugin.cached((run, "ledger"), lambda: Ledger(plan.output_url, plan.num_blocks))

    def compute(block_id: int, data: Any) -> Any:
        plugin.use_threads()  # torch's thread count is per thread
        return predict_block(data, plan, block_id, plugin.predictor, output.device_dtype(plugin.predictor))

    return block_ops(plan, volume, output, ledger, compute)


def _peak_rss() -> int:
    """Peak resident memory of this worker process, in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image.
    ``ru_maxrss`` would include the parent's memory at fork time (it survives ``exec``).
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# -- on the client --------------------------------------------------------------------------
def _groups(ids: Iterator[int], size: int, total: int) -> Iterator[tuple[int, ...]]:
    """Consecutive ids in groups of at most `size`: the `total` expected split into groups whose
    sizes differ by one at most (10 at size 3: 3, 3, 2, 2, not 3, 3, 3, 1), so that the last
    tasks of a short run leave no slot idle."""
    count = max(1, -(-total // size))
    base, extra = divmod(total, count)
    for i in range(count):
        group = tuple(itertools.islice(ids, base + (i < extra)))
        if not group:
            break
        yield group
    while group := tuple(itertools.islice(ids, size)):  # more ids than expected: still at most `size`
        yield group


class _Progress:
    """A rich progress bar: blocks done / total and voxels per second (or nothing)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.start = time.perf_counter()
        self.voxels = 0
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from rich.console import Console

        self.bar = Progress(
            TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self.task = self.bar.add_task("segment", total=total, rate="")
        self.bar.start()

    def advance(self, blocks: int, voxels: int) -> None:
        self.voxels += voxels
        if self.bar is not None:
            rate = self.voxels / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=blocks, rate=f"{rate / 1e6:.2f} Mvox/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def segment(
    input_url: str | Path,
    output_url: str | Path,
    checkpoint: str | Path,
    config: SegmentConfig = SegmentConfig(),
    *,
    client: Any = None,
) -> SegmentResult:
    """Predict every block of ``input_url`` into the OME-Zarr ``output_url``.

    `client` (a connected ``distributed.Client``) runs the blocks on its cluster; without
    one, `config.scheduler` or a local cluster of `config.workers` is used. Failed blocks are
    reported in the result (and the output's ledger), never retried beyond `config.retries`
    transient I/O errors; a rerun with ``resume=True`` computes only what is left.
    """
    from pipeline.ledger import Ledger
    from pipeline.prepare import prepare as check_and_plan
    from pipeline.resume import check_input_held_still
    from pipeline.runlock import RunLock
    from pipeline.pyramid import pyramid

    start = time.perf_counter()
    ready = check_and_plan(input_url, output_url, checkpoint, config)
    plan, checkpoint, sha256 = ready.plan, ready.checkpoint, ready.sha256
    for warning in ready.warnings:
        logger.warning(warning)
    checks = _Prechecks(ready.model_config, ready.tile, ready.batch, float_input=ready.volume.dtype.kind == "f",
                        settle=ready.settle)  # fmt: skip
    create = ready.create_output  # a resumed output's plan and input were checked by `prepare`
    result = SegmentResult(plan.output_url, plan.num_blocks, warnings=list(ready.warnings))

    locks: list[Any] = []

    def prepare() -> Iterator[int]:
        """Create the output (once the workers hold the model), take its run lock (one run
        per output at a time, `pipeline.runlock`) and list the blocks to run."""
        create()
        locks.append(RunLock(plan.output_url).acquire())
        done = Ledger(plan.output_url, plan.num_blocks).done_mask() if config.resume else None
        result.skipped = int(done.sum()) if done is not None else 0
        return (i for i in range(plan.num_blocks) if done is None or not done[i])

    predict = {"tile_shape": config.tile_shape, "batch_size": config.batch_size, "device": config.device, "amp": config.amp,
               "tta": config.tta, "compile": config.compile}  # fmt: skip
    if ready.grey_source != "dtype":
        predict["grey_range"] = tuple(ready.grey_range)
    if ready.max_out_tile is not None:  # one tile per block plane (pipeline.prepare.tile_cap)
        predict["max_out_tile"] = ready.max_out_tile
    spec = ModelSpec(str(checkpoint), sha256, predict=predict, torch_threads=config.torch_threads)
    payload = {"plan": plan.to_dict(), "run": uuid.uuid4().hex, "sparse": config.sparse}

    def levels(run_client: Any) -> None:
        """The pyramid on the run's workers, under its lock; a resumed run that wrote no block
        keeps the levels and regions already written."""
        if config.pyramid_levels and result.ok:
            stats = pyramid(plan.output_url, config.pyramid_levels, client=run_client,
                            resume=config.resume and result.computed == 0)  # fmt: skip
            result.pyramid_seconds = round(stats.seconds, 3)

    try:
        if client is not None:
            _run(client, "client", config, spec, payload, prepare, result, checks)
            levels(client)
        else:
            with connect(config.cluster()) as cluster:
                result.dashboard = cluster.dashboard or ""
                if result.dashboard and config.progress:
                    from rich.console import Console

                    Console(stderr=True).print(f"Dask dashboard: {result.dashboard}", highlight=False, soft_wrap=True)
                if spec.torch_threads is None and cluster.torch_threads:
                    spec = dataclasses.replace(spec, torch_threads=cluster.torch_threads)
                _run(cluster.client, cluster.kind, config, spec, payload, prepare, result, checks)
                levels(cluster.client)
        if locks:
            check_input_held_still(plan.output_url, ready.volume)
    finally:
        for lock in locks:
            lock.release()
    result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class _Prechecks:
    """What `_run` checks on the cluster before it writes: the tile against the workers'
    memory, a float input for NaN/inf, and (`settle`) the workers' device class, precision
    and tile against a resumed output's."""

    model_config: Any
    tile: tuple[int, ...]
    batch: int  # tiles per forward pass a block can fill
    float_input: bool
    settle: Callable[[list[str], tuple[int, ...]], None]  # `Prepared.settle`


def _run(
    client: Any,
    kind: str,
    config: SegmentConfig,
    spec: ModelSpec,
    payload: dict[str, Any],
    prepare: Callable[[], Iterator[int]],
    result: SegmentResult,
    checks: _Prechecks,
) -> None:
    """Fit the tile to the workers' memory, scan a float input, register the model plugin,
    create the output, stream the groups into `result`."""
    from pipeline.cluster import wait_for_slots
    from pipeline.finite import check_finite
    from pipeline.memory import fit_tile, worker_budget
    from pipeline.plan import SegmentPlan

    plan = SegmentPlan.from_dict(payload["plan"])
    result.cluster, result.slots = kind, wait_for_slots(client, config.timeout_s)
    budgets = client.run(worker_budget, config.device)
    fitted = fit_tile(
        checks.model_config, checks.tile, budgets, batch=checks.batch, chosen=config.tile_shape is not None,
        amp=config.amp, threads=config.compute_threads,
    )  # fmt: skip
    if fitted != tuple(checks.tile):
        spec = dataclasses.replace(spec, predict={**spec.predict, "tile_shape": fitted})
    checks.settle([b["device"] for b in budgets.values()], fitted)  # a resume's settings: refused before any block
    if checks.float_input and config.check_finite:
        check_finite(client, plan, max_in_flight=config.max_in_flight or default_in_flight(client), sparse=config.sparse)
    hold_model(client, spec, payload["run"])  # registered unless held: loads and checks it on every worker
    try:
        _stream(client, config, spec, payload, plan, prepare, result)
    finally:
        release_model(client, spec.name, payload["run"])  # shared by runs of the spec; idle ones are bounded


def _stream(
    client: Any,
    config: SegmentConfig,
    spec: ModelSpec,
    payload: dict[str, Any],
    plan: Any,
    prepare: Callable[[], Iterator[int]],
    result: SegmentResult,
) -> None:
    """Create the output and stream the groups into `result` (the run holds the model)."""
    result.plugin = spec.name
    todo = prepare()
    policy = RetryPolicy(attempts=config.retries)
    total = result.total_blocks - result.skipped
    progress = _Progress(total, config.progress)
    stages: dict[str, float] = {}

    def on_result(job: GroupJob, data: dict[str, Any]) -> None:
        report = GroupReport.from_dict(data)
        result.computed += len(report.done)
        result.voxels += report.voxels
        result.failed.extend(report.failed)
        result.model_loads[report.worker] = report.model_loads
        for k, v in report.seconds.items():
            stages[k] = stages.get(k, 0.0) + v
        progress.advance(len(report.done) + len(report.failed), report.voxels)

    def on_error(job: GroupJob, exc: BaseException) -> None:
        from pipeline.blocks import roi_dict
        from pipeline.ledger import Ledger

        ledger = Ledger(plan.output_url, plan.num_blocks)
        written = []
        for b in job.block_ids:
            roi = plan.block(b).write_roi
            try:
                done = ledger.is_done(b)  # written before the task died: done, not failed
            except Exception:  # the ledger unreadable now: report the block as failed
                done = False
            if done:
                written.append(b)
                result.computed += 1
                result.voxels += roi.size
                continue
            error = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "KilledWorker":  # the nanny's verdict after repeated deaths
                error += (
                    "; the worker process died on these blocks, often from running out of memory: use a "
                    "smaller --tile or --batch-size, then rerun with --resume"
                )
            result.failed.append(BlockFailure(b, "task", error, 1, {"write_roi": roi_dict(roi)}))
            try:
                ledger.mark_failed(b, exc, roi)
            except Exception:  # the result still carries the failure
                pass
        progress.advance(len(job.block_ids), sum(plan.block(b).write_roi.size for b in written))

    # Small runs get smaller groups, so every slot has work: at least 2 tasks per slot.
    result.blocks_per_task = max(1, min(config.group_size(tuple(plan.block_shape)), -(-total // (2 * result.slots))))
    depth = config.stage_depth(tuple(plan.block_shape))
    jobs = (
        GroupJob(ids, payload, spec.name, segment_ops, policy, depth, config.compute_threads)
        for ids in _groups(todo, result.blocks_per_task, total)
    )
    t0 = time.perf_counter()
    try:
        stats = submit_bounded(
            client, process_group, jobs,
            max_in_flight=config.max_in_flight or default_in_flight(client),
            on_result=on_result, on_error=on_error, key_prefix=f"emunet-segment-{payload['run'][:8]}",
        )  # fmt: skip
    except SchedulerLostError as exc:  # the tasks in flight were dropped, not failed: no ledger mark
        from pipeline.volume import redact_url

        raise SchedulerLostError(
            f"{exc}. Blocks written before are marked done in the ledger of {redact_url(plan.output_url)}; "
            "once the scheduler and its workers are back, rerun the same command with --resume "
            "(resume=True) to compute only the rest"
        ) from None
    finally:
        progress.close()
    result.run_seconds = time.perf_counter() - t0
    _roll_up(plan)
    result.peak_in_flight = stats.peak_in_flight
    result.stage_seconds = {k: round(v, 3) for k, v in stages.items()}
    result.failed.sort(key=lambda f: f.block_id)
    result.worker_peak_rss = client.run(_peak_rss)


def _roll_up(plan: Any) -> None:
    """Write the ledger's roll-ups of the groups this run completed (one listing of each
    group not yet rolled up), so that `emunet status` and ``--resume`` read one object per
    10,000 blocks afterwards: 0.6 s instead of 7.4 s for the first status of a 10^6-block
    output on local disk (`bench/bench_status.py`). Best effort: the run's result stands."""
    from pipeline.ledger import Ledger

    try:
        Ledger(plan.output_url, plan.num_blocks).done_mask()
    except Exception:  # the markers are the truth; a later reader rolls up instead
        logger.warning("could not roll up the ledger of %s", plan.output_url, exc_info=True)


def describe_result(result: SegmentResult) -> str:
    """One line for people: counts, time and speed (and the pyramid's time, if written)."""
    pyramid = f"; pyramid {result.pyramid_seconds:.1f} s" if result.pyramid_seconds else ""
    return (
        f"{result.computed} blocks written, {result.skipped} skipped, {len(result.failed)} failed of "
        f"{result.total_blocks} in {result.seconds:.1f} s ({result.voxels_per_second / 1e6:.2f} Mvox/s "
        f"end to end, {result.steady_voxels_per_second / 1e6:.2f} Mvox/s steady) on {result.slots} "
        f"slot(s), {result.cluster}{pyramid}"
    )


__all__ = ["SegmentConfig", "SegmentResult", "describe_result", "segment", "segment_ops"]
