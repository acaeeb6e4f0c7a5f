"""Everything `segment` checks before a cluster (or a Prefect server) starts.

`prepare` opens the input and the checkpoint, plans the blocks, checks the tile, the
device and the number of local workers, samples the input's grey values and fingerprint,
and checks what is at the output. It reads a few chunks and the checkpoint and writes
nothing, so `emunet segment` calls it first on both of its paths: every usage or input
error is one line within a second or two, before any process is started; `segment` calls
it again (the flow may run elsewhere) and uses what it found.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")  # plus "cuda:N"


def absolute(url: str | Path) -> str:
    """Local paths made absolute (workers may run elsewhere); URLs unchanged."""
    from pipeline.volume import is_remote

    text = str(url)
    if is_remote(text) or text.startswith("file://") or os.path.isabs(text):
        return text
    return os.path.abspath(text)


def check_device(device: str, *, local: bool) -> None:
    """A device name the workers understand; ``cuda`` on a local cluster needs a GPU here."""
    from pipeline.cluster import gpu_count

    name = str(device)
    if name not in DEVICES and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"expected a device in auto, cpu, cuda or cuda:N, got {name!r}")
    if local and name.startswith("cuda") and gpu_count() == 0:
        raise ValueError(
            f"expected a CUDA GPU for --device {name} on this machine's local workers, got none; use --device cpu "
            "(or auto), or --scheduler for a cluster with GPU workers"
        )


def check_local_workers(workers: int | None) -> None:
    """At most one local worker per core (CPU) or per GPU: more only slows every block down."""
    from pipeline.cluster import gpu_count

    if workers is None:
        return
    gpus = gpu_count()
    limit, what = (gpus, f"{gpus} GPU(s)") if gpus else (os.cpu_count() or 1, f"{os.cpu_count() or 1} CPU core(s)")
    if workers > limit:
        raise ValueError(
            f"expected at most {limit} local workers on this machine ({what}: each worker runs one block at a time "
            f"with all its threads), got --workers {workers}; use --workers {limit} or fewer, or --scheduler ADDRESS "
            "for a larger cluster"
        )


@dataclass
class Prepared:
    """What `prepare` found: the plan and everything a run needs before it starts workers."""

    checkpoint: Path
    sha256: str
    model_config: Any
    normalization: Any
    volume: Any = field(repr=False)
    plan: Any
    tile: tuple[int, ...]  # the input tile the blocks use
    max_out_tile: int | None  # the output-tile cap the workers' predictor needs for it (None: a tile was chosen)
    batch: int  # the largest batch a forward pass will hold
    grey_range: tuple[float, float]
    grey_source: str  # "given", "stored" or "dtype"
    warnings: list[str]
    resuming: bool  # an existing output is resumed
    inputs: dict[str, Any]  # provenance of what was read (grey range, fingerprint)
    config: Any = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)  # how blocks are computed (pipeline.resume.predict_settings)

    def _options(self) -> Any:
        from pipeline.output import OutputOptions

        return OutputOptions(dtype=self.config.dtype, mask=self.config.mask)

    def create_output(self) -> Any:
        from pipeline.output import create_output

        return create_output(
            self.plan, self._options(), model_config=self.model_config.to_dict(), resume=self.config.resume,
            overwrite=self.config.overwrite, reads=(str(self.checkpoint),),
            extra_attrs={"input": self.inputs, "predict": self.settings}, allow_mismatch=self.config.allow_mismatch,
        )  # fmt: skip

    def check_resume(self) -> None:
        """Refuse now, writing nothing, a resume whose plan or settings differ from the
        output's provenance (`pipeline.resume`; what is not known yet is not compared)."""
        from pipeline.output import open_group
        from pipeline.resume import check_resume

        attrs = dict(open_group(self.plan.output_url, "r").attrs.asdict())
        extra = {"input": self.inputs, "predict": self.settings}
        check_resume(self.plan.output_url, attrs, self.plan, self._options(), extra, allow_mismatch=self.config.allow_mismatch)

    def settle(self, devices: list[str], tile: tuple[int, ...]) -> None:
        """The workers are known: record their device class, precision and the tile they
        run, and (resuming) compare them with the output's before any block runs."""
        from pipeline.resume import predict_settings

        self.settings = predict_settings(tta=self.config.tta, devices=devices, amp=self.config.amp, tile=tile,
                                         compile=self.config.compile)
        if self.resuming:
            self.check_resume()

    def check_input_unchanged(self) -> None:
        from pipeline.resume import check_input_unchanged

        check_input_unchanged(self.plan.output_url, self.volume)


def _tile_and_batch(
    ckpt: Any, plan: Any, config: Any, max_out_tile: int | None, devices: list[str] | None
) -> tuple[tuple[int, ...], int]:
    """A legal tile for the checkpoint's model (illegal tiles raise) and the largest batch a
    forward pass holds: what a block fills, at most `pass_batch`'s on known CPU workers."""
    from unetcore.memory import pass_batch
    from unetcore.predict import PredictConfig, plan_tiles

    dims = ckpt.config.spatial_dims
    if config.tile_shape is not None and len(config.tile_shape) != dims:
        raise ValueError(
            f"Expected a tile of {dims} sizes for this {dims}D model. Got {tuple(config.tile_shape)} instead."
        )
    cap = {"max_out_tile": max_out_tile} if max_out_tile is not None else {}
    predict = PredictConfig(tile_shape=config.tile_shape, batch_size=config.batch_size, **cap)
    tiles = plan_tiles(ckpt.config, tuple(plan.block_shape[-dims:]), config.tile_shape, predict)
    per_block = math.prod(tiles.counts) * (plan.block_shape[0] if dims == 2 else 1)
    batch = min(config.batch_size, per_block)
    if devices and all(d == "cpu" for d in devices):
        batch = pass_batch("cpu", tiles.in_tile, batch)
    return tiles.in_tile, batch


TILE_KEPT = 1024  # with no tile chosen, one tile keeps up to this many voxels per axis (`tile_cap`)


def tile_cap(plan: Any, model_config: Any) -> int:
    """The largest output tile per axis when no tile is chosen (`PredictConfig.max_out_tile`):
    one tile per block plane, up to `TILE_KEPT` kept voxels per axis.

    One tile per 1024² plane needs 1.18× fewer FLOPs per kept voxel than four per plane, and
    `segment` with the shipped model ran 1.26× faster on 2 CPU cores with it (one tile per
    pass there: `unetcore.memory.pass_batch`). Where a worker lacks the memory,
    `pipeline.memory.fit_tile` shrinks the tile."""
    dims = model_config.spatial_dims
    return max(min(b, TILE_KEPT) + lo + hi for b, (lo, hi) in zip(plan.block_shape[-dims:], plan.context[-dims:], strict=True))


def planned_layout(config: Any, output_url: str, existing: Any = None) -> dict[str, Any]:
    """The block (and chunk and shard) shapes to plan with: the block given; when resuming an
    emunet output without one, the output's own layout, so that a resume never depends on
    today's defaults; else none (`pipeline.plan`'s defaults)."""
    from pipeline.ownership import inspect

    if config.block_shape is not None or not config.resume:
        return {"block_shape": config.block_shape}
    existing = existing if existing is not None else inspect(output_url)
    if not (existing.exists and existing.ours):
        return {"block_shape": None}
    from pipeline.output import load_plan

    stored = load_plan(output_url)
    return {"block_shape": stored.block_shape, "chunk_shape": stored.chunk_shape, "shard_shape": stored.shard_shape}


def _known_devices(config: Any) -> list[str] | None:
    """The workers' device class where the client can tell: an explicit device, or "auto" on
    local workers (this machine's GPUs); None for "auto" on a --scheduler's workers."""
    from pipeline.cluster import gpu_count

    if config.device != "auto":
        return [config.device]
    if config.scheduler is None:
        return ["cuda" if gpu_count() else "cpu"]
    return None


def prepare(input_url: str | Path, output_url: str | Path, checkpoint: str | Path, config: Any) -> Prepared:
    """Check everything that can be checked without workers; nothing is written."""
    from pipeline.fingerprint import input_fingerprint, read_sample
    from pipeline.grey import GreyStats, check_grey, resolve_grey_range
    from pipeline.ownership import check_em_input, check_output
    from pipeline.plan import plan_for_volume
    from pipeline.resume import predict_settings
    from pipeline.volume import open_volume, redact_url
    from unetcore.checkpoint import load_checkpoint

    local = config.scheduler is None
    check_device(config.device, local=local)
    if local:
        check_local_workers(config.workers)
    checkpoint = Path(checkpoint).absolute()
    # The one read of the checkpoint on the client: refuses pickles, truncated or edited files
    # (weights that do not fit the config, content hash) before anything else; its file hash.
    ckpt = load_checkpoint(checkpoint)
    sha256 = config.checkpoint_sha256 or ckpt.file_sha256
    existing = check_output(absolute(output_url), reads=(absolute(input_url), str(checkpoint)), overwrite=config.overwrite,
                            resume=config.resume, kind="segment")  # fmt: skip
    volume = open_volume(absolute(input_url), level=config.input_level, sparse=config.sparse)
    check_em_input(absolute(input_url))
    model_config, normalization = ckpt.config, ckpt.normalization
    plan = plan_for_volume(volume, absolute(output_url), model_config, checkpoint_sha256=sha256, tta=config.tta,
                           **planned_layout(config, absolute(output_url), existing))  # fmt: skip
    max_out_tile = tile_cap(plan, model_config) if config.tile_shape is None else None
    devices = _known_devices(config)
    tile, batch = _tile_and_batch(ckpt, plan, config, max_out_tile, devices)
    grey_range, grey_source = resolve_grey_range(volume, config.grey_range)
    sample = read_sample(volume)  # a few chunks spread over the volume, read once here
    warnings = check_grey(
        volume.dtype, redact_url(volume.url), grey_range, grey_source, GreyStats.of_sample(sample), normalization
    )
    resuming = existing.exists and config.resume
    settings = predict_settings(tta=config.tta, devices=devices, amp=config.amp,
                                tile=tile if config.tile_shape is not None else None,  # an explicit tile is never shrunk
                                compile=config.compile)
    inputs = {"grey_range": list(grey_range), "grey_range_source": grey_source, "sparse": config.sparse,
              "voxel_size_source": volume.voxel_size_source,
              "fingerprint": None if resuming else input_fingerprint(volume, sample)}  # fmt: skip
    ready = Prepared(
        checkpoint=checkpoint, sha256=sha256, model_config=model_config, normalization=normalization, volume=volume,
        plan=plan, tile=tile, max_out_tile=max_out_tile, batch=batch, grey_range=grey_range, grey_source=grey_source,
        warnings=warnings, resuming=resuming, inputs=inputs, config=config, settings=settings,
    )  # fmt: skip
    from pipeline.runlock import check_free

    if resuming:
        ready.check_resume()  # the output's plan and the settings known here; writes nothing
        ready.check_input_unchanged()  # the same input: its fingerprint
    if existing.exists:
        check_free(plan.output_url)  # no other live run is writing what we would continue or replace
    return ready


__all__ = ["Prepared", "absolute", "check_device", "check_local_workers", "planned_layout", "prepare", "tile_cap"]
