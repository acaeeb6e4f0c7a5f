"""Fit the model's tile to the workers' memory before a run writes anything.

The client asks every worker what it may still allocate (`worker_budget`: free GPU memory,
or for a CPU worker its Dask memory limit less its RSS), then checks the tile the blocks
will use against the smallest answer (`fit_tile`):

* a tile the user chose that does not fit is refused (`TileMemoryError`, exit 2 in the
  CLI) with a tile and a batch size that do fit; nothing has been created yet;
* the default tile (none chosen) that does not fit shrinks to the largest legal tile that
  does, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from unetcore.config import UNetConfig
from unetcore.memory import TileMemoryError, check_tile, largest_fitting_tile, pass_batch, suggestion

logger = logging.getLogger(__name__)


def worker_budget(device: str = "auto", dask_worker: Any = None) -> dict[str, Any]:
    """On a worker (``client.run`` passes `dask_worker`): its device and the bytes it may allocate.

    A CPU worker's budget is capped by the fraction of its Dask memory limit at which the
    nanny terminates it (``distributed.worker.memory.terminate``, 0.95), less its RSS.
    """
    import dask
    import psutil

    from unetcore.memory import device_budget
    from unetcore.predict import resolve_device

    dev = resolve_device(device)
    limit = None
    memory_limit = getattr(getattr(dask_worker, "memory_manager", None), "memory_limit", None)
    if memory_limit:
        fraction = dask.config.get("distributed.worker.memory.terminate", 0.95) or 1.0
        limit = int(memory_limit * fraction)
    rss = psutil.Process().memory_info().rss
    return {"device": str(dev), "budget": device_budget(str(dev), limit_bytes=limit, used_bytes=rss)}


def fit_tile(
    config: UNetConfig,
    tile: Sequence[int],
    budgets: dict[str, dict[str, Any]],
    *,
    batch: int,
    chosen: bool,
    amp: bool = True,
    threads: int = 1,
) -> tuple[int, ...]:
    """The tile to run: `tile` if it fits every worker, else a smaller one (or an error).

    `budgets` is ``client.run(worker_budget, device)``; `chosen` says whether the user set
    the tile (then it is refused rather than shrunk).
    """
    tile = tuple(int(t) for t in tile)
    if not budgets:
        return tile
    address, tightest = min(budgets.items(), key=lambda kv: kv[1]["budget"])
    device, budget = tightest["device"], int(tightest["budget"])
    bpe = 2 if (amp and device.startswith("cuda")) else 4  # bf16 autocast halves activations
    where = f"worker {address} ({device})"
    # A CPU pass holds fewer of a large tile (unetcore.memory.pass_batch); a shrunk tile is
    # sized for the full batch, which bounds whatever its passes then hold.
    per_pass = pass_batch("cpu", tile, batch) if device == "cpu" else batch
    try:
        check_tile(config, tile, batch=per_pass, budget=budget, where=where, bytes_per_element=bpe, threads=threads)
        return tile
    except TileMemoryError:
        if chosen:
            raise
    fit = largest_fitting_tile(config, budget, batch=batch, bytes_per_element=bpe, threads=threads)
    if fit is None:
        raise TileMemoryError(
            f"Expected a worker with memory for at least the smallest tile at batch size {batch}. Got "
            f"{where} with {budget / 2**30:.2f} GiB free; "
            + suggestion(config, tile, batch=batch, budget=budget, bytes_per_element=bpe, threads=threads)
        )
    fit = tuple(min(f, t) for f, t in zip(fit, tile, strict=True))
    logger.warning("default tile %s does not fit %s: using %s", tile, where, fit)
    return fit


__all__ = ["fit_tile", "worker_budget"]
