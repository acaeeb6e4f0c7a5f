"""Will a tile fit? Memory needed by a forward pass against what a device has free.

A tile that exhausts memory fails late and badly: CUDA raises ``OutOfMemoryError`` in the
middle of a run, and a CPU worker under Dask is killed by its nanny, again and again. This
module answers before anything runs, and names a tile that fits::

    need   = SAFETY × activations(tile, batch) + weights
    budget = free device memory (CUDA) or min(available RAM, the process's limit) (CPU)
    need > budget  →  TileMemoryError: "... use --tile 380 (…fits…) or --batch-size 1"

Activations are counted as `geometry.activation_bytes` counts them (skip connections plus
the two largest consecutive tensors; every tensor when training), with channels rounded
up to `CHANNEL_BLOCK`: oneDNN stores CPU activations in blocks of 16 channels, so a
4-channel layer costs 16. `SAFETY` covers the rest (input and output tiles, workspaces,
allocator slack). Measured forward-pass peak (VmHWM) / this count on a CPU: 0.76–1.44
over the `tiny` (4 channels), `cpu` and `paper` presets at tiles 428–1500; a training
step: 1.22–1.49 (16+ channels). Where the estimate is still short, `oom_error` turns
the real allocation failure into the same clear error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from unetcore import geometry
from unetcore.config import UNetConfig

SAFETY = 1.5  # inference peak / counted activations, with margin
TRAIN_SAFETY = 2.0  # the same for a training step
CHANNEL_BLOCK = 16  # channels are counted in blocks of this many (oneDNN's CPU layout)
GIB = 1 << 30


class TileMemoryError(ValueError):
    """A tile (at a batch size) needs more memory than the device has."""


def _activations(config: UNetConfig, tile: Sequence[int], *, batch: int, training: bool, bytes_per_element: int) -> int:
    layers = geometry.layer_shapes(config, tuple(tile))

    def numel(layer: geometry.LayerShape) -> int:
        return -(-layer.channels // CHANNEL_BLOCK) * CHANNEL_BLOCK * math.prod(layer.shape)

    if training:
        total = sum(numel(layer) for layer in layers)
    else:
        skips = sum(numel(layer) for layer in layers if layer.name.endswith(".relu2") and "down" in layer.name)
        total = skips + max(numel(a) + numel(b) for a, b in zip(layers, layers[1:], strict=False))
    return total * batch * bytes_per_element


@functools.lru_cache(maxsize=32)
def _param_count(config: UNetConfig) -> int:
    """Parameters of `unetcore.model.UNet(config)`, counted from the config (weights + biases
    of every convolution; tests compare it with the built model). Building the model on the
    meta device instead cost 1.1 s on a client's first call (the meta device's imports)."""
    dims, k = config.spatial_dims, config.kernel_size

    def conv(cin: int, cout: int, taps: int) -> int:
        return cin * cout * taps + cout

    def block(cin: int, cout: int) -> int:
        return conv(cin, cout, k**dims) + conv(cout, cout, k**dims)

    total, cin = 0, config.in_channels
    for level in range(config.depth):
        total += block(cin, config.channels(level))
        cin = config.channels(level)
    total += block(cin, config.channels(config.depth))
    for level in range(config.depth):
        cout = config.channels(level)
        total += conv(config.channels(level + 1), cout, math.prod(config.pools[level]))  # up-convolution
        total += block(2 * cout, cout)
    return total + conv(config.channels(0), config.num_classes, 1)  # 1×1 head


# On a CPU a forward pass of more input pixels than this runs slower per pixel: its
# activations leave the caches. The shipped model's width on 2 cores (bench_pipeline.py
# --only geometry): one 1244² tile per pass 1.21× faster per kept voxel than four 732²
# tiles, four 1244² tiles per pass 0.91×, one 2268² tile 0.95×.
CPU_PASS_PIXELS = 2_200_000  # about 4 × 742²


def pass_batch(device_type: str, in_tile: tuple[int, ...], batch_size: int) -> int:
    """Tiles per forward pass: `batch_size`, on a CPU at most `CPU_PASS_PIXELS` input pixels
    (never fewer than one tile)."""
    if device_type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_PASS_PIXELS // max(math.prod(in_tile), 1)))


def inference_bytes(
    config: UNetConfig, tile: Sequence[int], *, batch: int = 1, bytes_per_element: int = 4, threads: int = 1
) -> int:
    """Bytes one worker needs to run `threads` forward passes of `batch` tiles at once."""
    act = _activations(config, tile, batch=batch, training=False, bytes_per_element=bytes_per_element)
    return int(SAFETY * act * threads) + 4 * _param_count(config)


def training_bytes(config: UNetConfig, tile: Sequence[int], *, batch: int = 1) -> int:
    """Bytes of one SGD step: every activation kept for backward; weights, grads, momentum."""
    act = _activations(config, tile, batch=batch, training=True, bytes_per_element=4)
    return int(TRAIN_SAFETY * act) + 3 * 4 * _param_count(config)


def device_budget(device: str = "cpu", *, limit_bytes: int | None = None, used_bytes: int = 0) -> int:
    """Bytes this process may still allocate on `device`.

    CUDA: free memory of the device plus what PyTorch's cache holds unused. CPU: the
    system's available memory, capped by `limit_bytes` − `used_bytes` (a Dask worker's
    memory limit and its current RSS) and by ``RLIMIT_AS`` where one is set.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + cached)
    import psutil

    budget = int(psutil.virtual_memory().available)
    if limit_bytes:
        budget = min(budget, int(limit_bytes) - used_bytes)
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            budget = min(budget, soft - psutil.Process().memory_info().vms)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        pass
    return max(budget, 0)


def largest_fitting_tile(
    config: UNetConfig, budget: int, *, batch: int = 1, bytes_per_element: int = 4, threads: int = 1
) -> tuple[int, ...] | None:
    """The largest legal isotropic tile whose `inference_bytes` fit `budget` (None: none fits)."""
    return geometry.largest_tile_where(
        config, lambda t: inference_bytes(config, t, batch=batch, bytes_per_element=bytes_per_element, threads=threads) <= budget
    )


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _flag(tile: tuple[int, ...]) -> str:
    """A tile as the CLI's ``--tile`` takes it: one size for a square/cube, else comma-separated."""
    return str(tile[0]) if len(set(tile)) == 1 else ",".join(map(str, tile))


def suggestion(
    config: UNetConfig,
    tile: Sequence[int],
    *,
    batch: int,
    budget: int,
    bytes_per_element: int = 4,
    threads: int = 1,
) -> str:
    """"use --tile … or --batch-size …" that fit `budget`, or what the smallest tile needs.

    """
    kw = {"bytes_per_element": bytes_per_element, "threads": threads}
    options = []
    fit = largest_fitting_tile(config, budget, batch=batch, **kw)
    if fit is not None and math.prod(fit) < math.prod(tile):
        options.append(f"use --tile {_flag(fit)} (the largest that fits at batch size {batch})")
    smaller = [b for b in range(batch - 1, 0, -1) if inference_bytes(config, tile, batch=b, **kw) <= budget]
    if smaller:
        options.append(f"--batch-size {smaller[0]} (at this tile)")
    if not options and batch > 1 and (fit1 := largest_fitting_tile(config, budget, batch=1, **kw)) is not None:
        options.append(f"use --batch-size 1 --tile {_flag(fit1)}")
    if options:
        return " or ".join(options)
    smallest = geometry.smallest_input_shape(config)
    return (
        f"even the smallest legal tile {smallest} needs about {_gib(inference_bytes(config, smallest, **kw))}: "
        "free memory or use a larger machine"
    )


def check_tile(
    config: UNetConfig,
    tile: Sequence[int],
    *,
    batch: int,
    budget: int,
    where: str = "this machine",
    bytes_per_element: int = 4,
    threads: int = 1,
) -> int:
    """The bytes `tile` needs at `batch`; `TileMemoryError` naming what fits if over `budget`."""
    tile = tuple(int(t) for t in tile)
    kw = {"bytes_per_element": bytes_per_element, "threads": threads}
    need = inference_bytes(config, tile, batch=batch, **kw)
    if need <= budget:
        return need
    hint = suggestion(config, tile, batch=batch, budget=budget, **kw)
    raise TileMemoryError(
        f"Expected a tile that fits in memory. Got tile {tile} at batch size {batch}, which needs about "
        f"{_gib(need)} while {where} has {_gib(budget)} free; {hint}"
    )


def check_training_tile(config: UNetConfig, tile: Sequence[int], *, batch: int, budget: int, where: str) -> int:
    """The bytes a training step needs; `TileMemoryError` naming a tile that fits if over `budget`."""
    tile = tuple(int(t) for t in tile)
    need = training_bytes(config, tile, batch=batch)
    if need <= budget:
        return need
    fit = geometry.largest_tile_where(config, lambda t: training_bytes(config, t, batch=batch) <= budget)
    hint = (
        f"use --tile {_flag(fit)} (the largest that fits at batch size {batch})"
        if fit is not None
        else "even the smallest legal tile does not fit: free memory or use a larger machine"
    )
    raise TileMemoryError(
        f"Expected a training tile that fits in memory. Got tile {tile} at batch size {batch}, which needs "
        f"about {_gib(need)} for a training step while {where} has {_gib(budget)} free; {hint}"
    )


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: ``MemoryError``, CUDA's or the CPU allocator's."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def oom_error(cause: str, config: UNetConfig, tile: Sequence[int], *, batch: int, device: str) -> TileMemoryError:
    """The clear error for a forward pass that ran out of memory (`cause`: the allocator's words).

    Build it once the failed pass's tensors are released: the suggestion measures what is free.
    """
    try:
        hint = suggestion(config, tuple(tile), batch=batch, budget=device_budget(device))
    except Exception:  # pragma: no cover - best effort while handling an error
        hint = "use a smaller --tile or --batch-size"
    return TileMemoryError(
        f"Expected a tile that fits in memory. Got tile {tuple(tile)} at batch size {batch}, which ran out of "
        f"{device} memory ({cause.strip().splitlines()[0][:200] if cause.strip() else 'MemoryError'}); {hint}"
    )


__all__ = [
    "CPU_PASS_PIXELS",
    "SAFETY",
    "TileMemoryError",
    "check_tile",
    "check_training_tile",
    "device_budget",
    "inference_bytes",
    "is_oom",
    "largest_fitting_tile",
    "suggestion",
    "training_bytes",
    "oom_error",
    "pass_batch",
]
