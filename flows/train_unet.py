"""`train_unet`: train a U-Net with the paper's recipe and publish its validation metrics.

::

    check-training-data ─► fit-model ─────────────► evaluate-checkpoint ─► artifacts:
    (shapes, slices,       (Trainer.fit: in process,  (ISBI 2012 metrics on    train-metrics (table),
     configs)               or on a Dask GPU worker)   the validation slices)  train-summary (markdown)

With ``cluster`` (a scheduler address, or N local workers) the training and the evaluation
run on a Dask worker holding a ``GPU`` slot (``client.submit(..., resources={"GPU": 1})``);
without it, in the flow's own process. A retried ``fit-model`` resumes from
``last.safetensors`` (bit for bit: all randomness derives from (seed, step)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows._common import (
    ClusterParams, attempt, every, metric_line, metric_rows, on_gpu_worker, retry_on_transient, run_logger, scheduler_address,
)  # fmt: skip
from flows.unet_training import RUN_FILES, TrainSpec, check_out_dir, evaluate_checkpoint, run_training


class TrainUNetParams(TrainSpec):
    """A `TrainSpec` (data, model, recipe) plus where and how the flow runs it."""

    cluster: ClusterParams | None = Field(
        None, description="Train on a Dask GPU worker: a scheduler address or N local workers; None = in the flow's process."
    )
    retries: int = Field(
        1, ge=0, description="Retries after a transient error (I/O, timeouts, connections); training resumes from last.safetensors."
    )
    progress_interval_s: float = Field(30.0, gt=0, description="Seconds between progress lines in the run log.")

    def spec(self, **changes: Any) -> TrainSpec:
        return TrainSpec.model_validate({**self.model_dump(include=set(TrainSpec.model_fields)), **changes})


def _stage(name: str):
    return task(name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_on_transient, retry_delay_seconds=[5, 30])


@_stage("check-training-data")
def check_training_data(spec: TrainSpec) -> dict[str, Any]:
    """Shapes, slices and configs, checked before any training starts."""
    from flows._common import shape_of

    model_config, train_config, _ = spec.configs()
    shape = shape_of(spec.images, "image")
    for url, kind in ((spec.labels, "labels"), (spec.weights, "weights")):
        if url and shape_of(url, kind) != shape:
            raise ValueError(f"Expected {kind} of the images' shape {shape}. Got {shape_of(url, kind)} at {url} instead.")
    train, val = ([0], []) if spec.is_3d(model_config) else spec.split(shape[0] if len(shape) == 3 else 1)
    info = {"shape": list(shape), "train_slices": train, "val_slices": val, "steps": train_config.steps,
            "model": {k: model_config.to_dict()[k] for k in ("spatial_dims", "depth", "base_channels")}}  # fmt: skip
    run_logger().info(f"data {tuple(shape)}: {len(train)} training and {len(val)} validation slice(s); {train_config.steps} steps")
    return info


@_stage("fit-model")
def fit_model(spec: TrainSpec, address: str | None, interval_s: float) -> dict[str, Any]:
    """`Trainer.fit` in process or on a GPU worker; progress from metrics.jsonl."""
    log = run_logger()
    # --out held no run when the flow run began (`check_out_dir`), unless the user resumed one:
    # what a retry finds there is this flow run's own, to continue
    if attempt() > 1 and any((Path(spec.out_dir) / name).exists() for name in RUN_FILES):
        spec = spec.model_copy(update={"resume": True})
        log.info(f"attempt {attempt()}: resuming in {spec.out_dir} (from last.safetensors, if the first try saved one)")
    metrics = Path(spec.out_dir) / "metrics.jsonl"

    def progress() -> None:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        last = next((json.loads(line) for line in reversed(lines) if '"loss"' in line), None)
        if last:
            log.info(f"step {last['step']}: loss {last['loss_ema']:.4f}, lr {last['lr']:.2e}, {last['elapsed_s']:.0f} s")

    with every(interval_s, progress):
        if address is None:
            result = run_training(spec, log=log.info)
        else:
            log.info(f"training on a GPU worker of {address}")
            result = on_gpu_worker(address, run_training, spec.model_dump())
    log.info(f"trained {result['steps']} steps in {result['seconds']:.1f} s → {result['best_checkpoint']}")
    return result


@_stage("evaluate-checkpoint")
def evaluate(spec: TrainSpec, checkpoint: str, address: str | None) -> dict[str, Any] | None:
    """ISBI 2012 metrics of the checkpoint on the validation slices (where it was trained)."""
    if address is None:
        found = evaluate_checkpoint(spec, checkpoint)
    else:
        found = on_gpu_worker(address, evaluate_checkpoint, spec.model_dump(), checkpoint)
    log = run_logger()
    if found is None:
        log.warning("no validation slices (or a 3D model): no metrics")
    else:
        log.info(f"validation slices {found['slices']}: {metric_line(found['scores'])}")
    return found


def _summary(params: TrainUNetParams, info: dict[str, Any], result: dict[str, Any], found: dict[str, Any] | None) -> str:
    validation = result.get("validation") or {}
    weights = f", weights `{params.weights}`" if params.weights else ""
    lines = [
        "# train-unet",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{params.images}`, `{params.labels}`{weights} {tuple(info['shape'])} |",
        f"| slices | train {info['train_slices']}, validation {info['val_slices']} |",
        f"| model | {params.preset} {info['model']} |",
        f"| training | {result['steps']} steps in {result['seconds']:.1f} s ({result['seconds_per_step']:.3f} s/step) "
        f"on {result['device']} |",
        f"| checkpoints | `{result['best_checkpoint']}` (best), `{result['last_checkpoint']}` (last) |",
    ]
    if validation:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in validation.items() if isinstance(v, float))
        lines.append(f"| last validation | {scores} |")
    if found:
        lines.append(f"| ISBI metrics | {metric_line(found['scores'])} |")
    return "\n".join(lines) + "\n"


@flow(name="train-unet", log_prints=False)
def train_unet(params: TrainUNetParams) -> dict[str, Any]:
    """Train on raw/labels (TIFF or Zarr), save the checkpoint, evaluate and publish metrics."""
    retry = {"retries": params.retries}
    spec = params.spec()
    check_out_dir(spec)  # once, before any attempt: a retry may resume only a run this flow run began
    info = check_training_data.with_options(**retry)(spec)
    with scheduler_address(params.cluster) as address:
        result = fit_model.with_options(**retry)(spec, address, params.progress_interval_s)
        found = evaluate.with_options(**retry)(spec, result["best_checkpoint"], address)
    if found is not None:
        create_table_artifact(
            metric_rows(found["scores"]), key="train-metrics",
            description=f"ISBI 2012 metrics of {result['best_checkpoint']} on validation slices {found['slices']} (lower is better)",
        )  # fmt: skip
    create_markdown_artifact(_summary(params, info, result, found), key="train-summary",
                             description=f"train-unet → {params.out_dir}")  # fmt: skip
    return {**result, "metrics": None if found is None else found["scores"]}
