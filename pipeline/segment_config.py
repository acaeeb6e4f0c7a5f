"""`SegmentConfig`: everything `pipeline.segment.segment` can be told, validated at the
boundary; each field may also come from an ``EMUNET_SEGMENT_<FIELD>`` variable, parsed by
its type (never evaluated)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from pipeline.cluster import ClusterConfig
from pipeline.dtypes import OUTPUT_DTYPES


ENV_PREFIX = "EMUNET_SEGMENT_"
TASK_VOXELS = 8 * 8 * 512 * 512  # output voxels a task aims at (16.8 M): at least 8 blocks in any case
MIN_BLOCKS_PER_TASK, MAX_BLOCKS_PER_TASK = 8, 64


# Blocks smaller than this run their stages one after another (`queue_depth` 0) unless told
# otherwise. For them a hand-over between stage threads (waking a sleeping thread) costs
# more than the overlap of reading and writing with the model gains: 1 × 64 × 64 blocks, five
# alternating rounds on 2 CPU cores, 1.05–1.46× the blocks/s of depth 1 (docs/benchmarks.md).
SERIAL_BLOCK_VOXELS = 2**16  # 1 × 256 × 256


def auto_queue_depth(block_shape: tuple[int, ...]) -> int:
    """Blocks waiting between stages when none is given: 0 (no stage threads) for blocks under
    `SERIAL_BLOCK_VOXELS`, else 1 (read the next block and write the last one while the model
    runs)."""
    return 0 if math.prod(int(n) for n in block_shape) < SERIAL_BLOCK_VOXELS else 1


def auto_blocks_per_task(block_shape: tuple[int, ...]) -> int:
    """Blocks per task when none is given: about `TASK_VOXELS` output voxels, 8 to 64 blocks.

    A task costs the scheduler and the worker a few ms whatever its size, and its blocks
    overlap read, compute and write only within it, so small blocks go in larger groups:
    8 blocks of 8 × 512 × 512 or of the default 4 × 1024 × 1024, 64 blocks of 1 × 64 × 64
    (`bench/bench_scale.py`)."""
    voxels = max(math.prod(int(n) for n in block_shape), 1)
    return max(MIN_BLOCKS_PER_TASK, min(MAX_BLOCKS_PER_TASK, -(-TASK_VOXELS // voxels)))


@dataclass(frozen=True)
class SegmentConfig:
    """Everything `segment` can be told; each field may come from ``EMUNET_SEGMENT_<NAME>``."""

    block_shape: tuple[int, int, int] | None = None  # voxels per block; None = (4, 1024, 1024) in chunks of (4, 512, 512), aligned
    tile_shape: tuple[int, ...] | None = None  # model input tile (legal); None = one per block plane up to 1024² kept (`tile_cap`)
    batch_size: int = 4  # tiles per forward pass, at most (fewer of large tiles on a CPU: unetcore.memory.pass_batch)
    dtype: str = "uint8"  # stored probability: uint8 (p·255), float16 or float32
    mask: bool = False  # also store mask = p ≥ 0.5
    device: str = "auto"  # on each worker: "auto" = its GPU if any, else the CPU
    amp: bool = True  # bf16 autocast on CUDA; False: float32 tensors (cuDNN may still run convolutions in TF32, PyTorch's default on Ampere and later)
    workers: int | None = None  # local workers; None = one per GPU (2 on a CPU machine)
    scheduler: str | None = None  # address of a running Dask scheduler (overrides workers)
    max_in_flight: int | None = None  # futures alive at once; None = 3 × GPU slots
    blocks_per_task: int | None = None  # consecutive blocks per task, at most; None = `auto_blocks_per_task`
    queue_depth: int | None = None  # blocks waiting between stages in a task; 0: one after another; None = `auto_queue_depth`
    compute_threads: int = 1  # threads sharing a worker's device (2 was slower on an H200)
    retries: int = 3  # tries per read or write for transient I/O errors
    overwrite: bool = False  # replace an existing output
    resume: bool = False  # continue an existing output: skip the blocks its ledger has as done
    allow_mismatch: bool = False  # with resume: continue although settings differ (pipeline.resume); recorded
    pyramid_levels: int = 0  # 2× (y, x) mean levels written after the blocks
    progress: bool = True  # a rich progress bar on stderr
    input_level: int | None = None  # multiscale level of an OME-Zarr input
    checkpoint_sha256: str | None = None  # expected file hash; None = hash of the client's file
    torch_threads: int | None = None  # intra-op threads per CPU worker; None = cores / workers
    timeout_s: float = 60.0  # waiting for a worker with a GPU slot
    connect_timeout_s: float = 5.0  # reaching a --scheduler address and its handshake
    check_finite: bool = True  # scan a float input for NaN/inf before writing (pipeline.finite)
    sparse: bool = False  # input chunks missing from the store read as the fill value (else the block fails)
    grey_range: tuple[float, float] | None = None  # input values mapped to [0, 1]; None = stored or dtype range
    tta: bool = False  # mean over the 8 flips/rotations of the (y, x) plane (unetcore.tta): 8× the model time
    compile: bool = False  # torch.compile the model on each worker: for GPUs (on a CPU no faster than eager channels-last), results within ~1e-4, a compile at start

    def __post_init__(self) -> None:
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"Expected dtype in {OUTPUT_DTYPES}. Got {self.dtype!r} instead.")
        for name in ("batch_size", "blocks_per_task", "compute_threads", "retries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"Expected {name} ≥ 1. Got {getattr(self, name)} instead.")
        if self.queue_depth is not None and self.queue_depth < 0:
            raise ValueError(f"Expected queue_depth ≥ 0 (0: one block after another). Got {self.queue_depth} instead.")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"Expected torch_threads ≥ 1 (or unset: cores / workers). Got {self.torch_threads} instead.")
        for name in ("timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected {name} > 0 seconds. Got {getattr(self, name)} instead.")
        from pipeline.prepare import check_device

        check_device(self.device, local=False)
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"Expected max_in_flight ≥ 1. Got {self.max_in_flight} instead.")
        if self.pyramid_levels < 0:
            raise ValueError(f"Expected pyramid_levels ≥ 0. Got {self.pyramid_levels} instead.")
        if self.resume and self.overwrite:
            raise ValueError("Expected at most one of resume and overwrite. Got both instead.")
        if self.block_shape is not None and len(self.block_shape) != 3:
            raise ValueError(f"Expected a (z, y, x) block shape. Got {self.block_shape} instead.")
        ClusterConfig(workers=self.workers, scheduler=self.scheduler)  # validates the pair
        if self.grey_range is not None:
            from unetcore.normalization import check_grey_range

            object.__setattr__(self, "grey_range", check_grey_range(tuple(self.grey_range)))

    def group_size(self, block_shape: tuple[int, ...]) -> int:
        """The largest number of blocks per task: `blocks_per_task`, or `auto_blocks_per_task`."""
        return self.blocks_per_task or auto_blocks_per_task(block_shape)

    def stage_depth(self, block_shape: tuple[int, ...]) -> int:
        """Blocks waiting between a task's stages: `queue_depth`, or `auto_queue_depth`."""
        return auto_queue_depth(block_shape) if self.queue_depth is None else self.queue_depth

    def cluster(self) -> ClusterConfig:
        return ClusterConfig(self.workers, self.scheduler, torch_threads=self.torch_threads, timeout_s=self.timeout_s,
                             connect_timeout_s=self.connect_timeout_s)  # fmt: skip

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> SegmentConfig:
        """Defaults, then ``EMUNET_SEGMENT_*`` variables, then `overrides` (never eval'd)."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse_env(f.name, str(f.type), raw)
        # workers and scheduler are one choice: the one given here replaces the other's variable.
        for given, other in (("scheduler", "workers"), ("workers", "scheduler")):
            if overrides.get(given) is not None and overrides.get(other) is None:
                values.pop(other, None)
        return cls(**{**values, **overrides})


def _parse_env(name: str, kind: str, raw: str) -> Any:
    text = raw.strip()
    if "None" in kind and text.lower() in ("", "none"):
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"Expected {ENV_PREFIX}{name.upper()} to be true/false. Got {raw!r} instead.")
        return text.lower() in ("1", "true", "yes")
    try:
        if kind.startswith("tuple"):
            cast = float if "float" in kind else int
            return tuple(cast(v) for v in re.split(r"[,x\s]+" if cast is int else r"[,\s]+", text) if v)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"Expected {ENV_PREFIX}{name.upper()} of type {kind}. Got {raw!r} instead.") from None
    return text


__all__ = ["ENV_PREFIX", "OUTPUT_DTYPES", "SegmentConfig", "auto_blocks_per_task", "auto_queue_depth"]
