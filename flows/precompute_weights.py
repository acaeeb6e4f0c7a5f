"""`precompute_weights`: border weight maps (U-Net paper, Eq. 2) of a Zarr label volume.

Wraps `pipeline.weights.compute_weight_maps` (blockwise, equal to the whole-volume map)::

    compute-weight-maps ─► weight-statistics ─► artifact: weights-summary

The result is an OME-Zarr group with the array ``weights`` that `train_unet` reads
(``weights: OUT.zarr``) instead of computing the maps itself.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows._common import attempt, flow_start, made_since, retry_on_transient, run_logger


class PrecomputeWeightsParams(BaseModel):
    """Which labels, where the maps go, and Eq. 2's parameters (the paper's defaults)."""

    model_config = ConfigDict(extra="forbid")

    labels_url: str = Field(description="Label volume (Zarr, z y x): 0 = membrane, > 0 = cell (binary or instance ids).")
    output_url: str = Field(description="Output OME-Zarr group (array 'weights', float32).")
    w0: float = Field(10.0, ge=0, description="Peak of the border term.")
    sigma: float = Field(5.0, gt=0, description="Width of the border term (pixels of the finest axis).")
    class_balance: Literal["frequency", "none"] = Field("frequency", description="w_c: inverse class frequency, or none (1).")
    cutoff: float = Field(0.01, gt=0, description="Border terms below this are dropped (bounds the halo).")
    instances: bool = Field(False, description="Each non-zero id is a cell (else cells = connected components of label > 0).")
    mode: Literal["2d", "3d"] = Field("2d", description="2d: one map per z slice (the paper); 3d: true 3D distances.")
    block_shape: tuple[int, int, int] | None = Field(None, description="Voxels per block (z, y, x); None = (16, 256, 256).")
    overwrite: bool = Field(False, description="Replace an existing output.")
    retries: int = Field(2, ge=0, description="Retries after a transient error (I/O, timeouts, connections).")


@task(name="compute-weight-maps", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[1, 5, 30])
def compute(params: PrecomputeWeightsParams, since: str | None = None) -> dict[str, Any]:
    """`compute_weight_maps` on the labels; a retry replaces its own partial output (one made
    since ``since``, the flow run's start), never an older one the flags do not allow."""
    from pipeline.weights import compute_weight_maps
    from unetcore.weightmap import WeightMapConfig

    log = run_logger()
    overwrite = params.overwrite or (attempt() > 1 and made_since(params.output_url, since))
    config = WeightMapConfig(w0=params.w0, sigma=params.sigma, class_balance=params.class_balance, cutoff=params.cutoff)
    start = time.perf_counter()
    plan = compute_weight_maps(
        params.labels_url, params.output_url, config, instances=params.instances, mode=params.mode,
        block_shape=params.block_shape, overwrite=overwrite,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    log.info(f"weights: {plan.num_blocks} block(s) of {plan.block_shape}, halo {plan.halo}, {seconds:.1f} s")
    return {"num_blocks": plan.num_blocks, "block_shape": list(plan.block_shape), "halo": list(plan.halo),
            "volume_shape": list(plan.volume_shape), "seconds": seconds}  # fmt: skip


@task(name="weight-statistics", cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[2, 10])
def statistics(output_url: str) -> dict[str, float]:
    """min / max / mean of the written maps, read one chunk slab at a time."""
    import numpy as np

    from pipeline.output import open_group

    array = open_group(output_url, "r")["weights"]
    lo, hi, total, count = np.inf, -np.inf, 0.0, 0
    step = array.chunks[0]
    for z in range(0, array.shape[0], step):
        slab = np.asarray(array[z : z + step])
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
        total, count = total + float(slab.sum(dtype=np.float64)), count + slab.size
    stats = {"min": lo, "max": hi, "mean": total / max(count, 1)}
    run_logger().info(f"weights min {lo:.3f}, max {hi:.3f}, mean {stats['mean']:.3f}")
    return stats


@flow(name="precompute-weights", log_prints=False)
def precompute_weights(params: PrecomputeWeightsParams) -> dict[str, Any]:
    """Border weight maps of a Zarr label volume, for `train_unet`."""
    from pipeline.volume import redact_url

    retry = {"retries": params.retries}
    done = compute.with_options(**retry)(params, flow_start())
    stats = statistics.with_options(**retry)(params.output_url)
    out = redact_url(params.output_url)
    create_markdown_artifact(
        "\n".join([
            "# precompute-weights",
            "",
            "| | |",
            "|---|---|",
            f"| labels | `{redact_url(params.labels_url)}` {tuple(done['volume_shape'])}, "
            f"{'instance ids' if params.instances else 'binary'} |",
            f"| output | `{out}` (array `weights`, float32) |",
            f"| Eq. 2 | w0 {params.w0}, σ {params.sigma} px, class balance {params.class_balance}, "
            f"cutoff {params.cutoff}, {params.mode} |",
            f"| blocks | {done['num_blocks']} of {tuple(done['block_shape'])}, halo {tuple(done['halo'])}, {done['seconds']:.1f} s |",
            f"| values | min {stats['min']:.3f}, max {stats['max']:.3f}, mean {stats['mean']:.3f} |",
            "",
            f"Train with them: `emunet train --weights {out} …` or `train_unet` with `weights: {out}`.",
        ]) + "\n",
        key="weights-summary",
        description=f"precompute-weights → {out}",
    )  # fmt: skip
    return {"output_url": params.output_url, **done, "statistics": stats}
