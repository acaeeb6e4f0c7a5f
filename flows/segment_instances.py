"""`segment_instances`: a segment output's probability → neuron instances (``neuron_ids``), one flow.

Prefect sees three stages; the per-block and per-tree-node loops live in Dask
(`pipeline.instances`), never in Prefect::

    check-inputs ─► run-instances ─► evaluate-labels
    (map, config,    (fragments, graph,   (VI, adapted Rand, CREMI, ISBI
     resume policy)   tree, relabel)       per slice, if ground truth is given)
                                │
       artifacts: instances-summary (markdown), instances-segments (table: the thresholds,
       segments counted at the one in `neuron_ids`), instances-sizes (table: segment size
       histogram), instances-metrics (table)

A retried ``run-instances`` resumes from the ledger (``ledger/instances``) instead of
starting over; stages retry only transient errors.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows._common import ClusterParams, attempt, retry_on_transient, run_logger


class SegmentInstancesParams(BaseModel):
    """Which output to agglomerate, with which parameters, where the work runs."""

    model_config = ConfigDict(extra="forbid")

    output_url: str = Field(description="An `emunet segment` output (OME-Zarr group with `probability`).")
    ground_truth_url: str | None = Field(None, description="Optional Zarr label volume (0 = ignored) to score `neuron_ids`.")
    thresholds: tuple[float, ...] = Field((0.6, 0.7, 0.75, 0.8), description="Merge thresholds (edge score < t), one pass.")
    labels_threshold: float | None = Field(None, description="Which threshold fills `neuron_ids` (default: the middle one).")
    mode: Literal["auto", "2d", "3d"] = Field("auto", description="Fragments per 2D slice, in 3D, or auto by anisotropy.")
    method: Literal["watershed", "components"] = Field("watershed", description="Seeded watershed, or components of p > seed_threshold.")
    seed_threshold: float = Field(0.5, gt=0, lt=1, description="Cell mask p > this; seeds from its distance transform.")
    min_size: int = Field(20, ge=0, description="Fragments smaller than this (voxels) are flooded by their neighbours.")
    block_shape: tuple[int, int, int] | None = Field(None, description="Voxels per block; None = chunk multiples near 8×256×256 / 64³.")
    cluster: ClusterParams = Field(default_factory=ClusterParams, description="A running Dask scheduler, or N local workers.")
    resume: bool = Field(False, description="Continue an interrupted run (same parameters).")
    overwrite: bool = Field(False, description="Replace earlier instance results.")


def _config(params: SegmentInstancesParams) -> Any:
    from pipeline.instances import InstanceConfig

    return InstanceConfig(
        method=params.method, mode=params.mode, seed_threshold=params.seed_threshold, min_size=params.min_size,
        block_shape=params.block_shape, thresholds=params.thresholds, labels_threshold=params.labels_threshold,
    )  # fmt: skip


@task(name="check-inputs", cache_policy=NO_CACHE)
def check_inputs(params: SegmentInstancesParams) -> dict[str, Any]:
    """Everything validated before anything is written (bad input fails here, for good)."""
    from pipeline.instances import prepare

    job = prepare(params.output_url, _config(params), resume=params.resume, overwrite=params.overwrite)
    run_logger().info(f"instances: {job.num_blocks} block(s) of {job.block_shape}, mode {job.mode}")
    return {"num_blocks": job.num_blocks, "block_shape": list(job.block_shape), "mode": job.mode}


@task(name="run-instances", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[2, 10])
def run(params: SegmentInstancesParams) -> dict[str, Any]:
    """The four blockwise stages on Dask; a retry resumes from the ledger."""
    from pipeline.instances import run_instances
    from pipeline.instances.runner import instance_client

    resume = params.resume or attempt() > 1
    workers = params.cluster.workers if params.cluster.workers is not None else 2
    with instance_client(workers, params.cluster.scheduler) as client:
        summary = run_instances(params.output_url, _config(params), client=client, resume=resume,
                                overwrite=params.overwrite and not resume, log=run_logger().info)
    return summary.to_dict()


@task(name="evaluate-labels", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[2, 10])
def evaluate(params: SegmentInstancesParams) -> dict[str, Any]:
    """3D and per-slice ISBI scores of ``neuron_ids`` against the ground truth (blockwise)."""
    from pipeline.instances.layout import NEURON_IDS
    from pipeline.instances.volume_metrics import LabelSource, isbi_labels, volume_scores
    from pipeline.volume import split_url

    store, path = split_url(params.ground_truth_url or "")
    seg, gt = LabelSource(params.output_url, NEURON_IDS), LabelSource(store, path)
    return {**volume_scores(seg, gt), "isbi": isbi_labels(seg, gt)}


def _markdown(params: SegmentInstancesParams, summary: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    lines = [
        f"# Instances of `{params.output_url}`",
        "",
        f"{summary['num_blocks']} block(s) of {summary['block_shape']}, mode {summary['mode']}, "
        f"tree of {summary['tree_levels']} level(s); {summary['fragments']} fragments, {summary['edges']} edges.",
        f"`neuron_ids` holds the segmentation at threshold **{summary['labels_threshold']}**.",
        "",
        "```python",
        "import xarray as xr",
        f"labels = xr.open_zarr({params.output_url!r}, consolidated=False)['neuron_ids']",
        "```",
    ]
    if metrics:
        lines += ["", f"VI split {metrics['vi_split']:.4f}, VI merge {metrics['vi_merge']:.4f}, "
                      f"adapted Rand error {metrics['adapted_rand_error']:.4f}, CREMI score {metrics['cremi_score']:.4f}."]
    return "\n".join(lines)


@flow(name="segment-instances", log_prints=True)
def segment_instances(params: SegmentInstancesParams) -> dict[str, Any]:
    """Neuron instances of a segment output: fragments, region graph, agglomeration, neuron_ids."""
    check_inputs(params)
    summary = run(params)
    metrics = evaluate(params) if params.ground_truth_url else None
    create_markdown_artifact(key="instances-summary", markdown=_markdown(params, summary, metrics))
    create_table_artifact(key="instances-segments", table=[
        {"threshold": float(t), "segments": summary["segments"].get(str(t))} for t in summary["thresholds"]])
    create_table_artifact(key="instances-sizes", table=[
        {"voxels": k, "segments": v} for k, v in summary["size_histogram"].items()] or [{"voxels": "-", "segments": 0}])
    if metrics:
        rows = [{"metric": k, "value": metrics[k]} for k in ("vi_split", "vi_merge", "adapted_rand_error", "cremi_score")]
        rows += [{"metric": f"isbi_{k}", "value": metrics["isbi"][k]} for k in ("rand_error", "info_error", "rand_error_2012")]
        create_table_artifact(key="instances-metrics", table=rows)
    return {"summary": summary, "metrics": metrics}
