"""Stream block tasks to a Dask cluster with a bounded number of futures in flight.

A terabyte volume has 10^5–10^6 blocks; one graph of that many tasks would hold the client
and the scheduler hostage. Instead the client keeps at most ``max_in_flight`` futures and
submits the next group whenever one finishes (``distributed.as_completed``, growing as it
goes)::

    groups ─► [ submit ≤ max_in_flight ] ─► as_completed ─► on_result ─► submit the next one

Every task is submitted on its own with ``client.submit(..., resources={"GPU": 1},
pure=False, key=...)``: never through a collection's graph, whose optimisation can fuse
tasks and drop the resource annotation (dask#7036, dask#10325). The restriction makes the
scheduler run at most one block task per GPU slot.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, as_completed

GPU_RESOURCES: dict[str, float] = {"GPU": 1}  # one block task per GPU (or CPU slot)


@dataclass
class SubmitStats:
    """What the submission loop saw: tasks submitted and the most futures held at once."""

    submitted: int = 0
    finished: int = 0
    errored: int = 0
    peak_in_flight: int = 0
    keys: list[str] = field(default_factory=list)  # the first few keys (for inspection)


def default_in_flight(client: Client, per_slot: int = 3) -> int:
    """``per_slot`` × the cluster's GPU slots (at least 2): enough to keep every slot fed."""
    slots = sum(
        info.get("resources", {}).get("GPU", 0) for info in client.scheduler_info(n_workers=-1)["workers"].values()
    )
    return max(2, int(per_slot * max(slots, 1)))


def submit_bounded(
    client: Client,
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    max_in_flight: int,
    on_result: Callable[[Any, Any], None],
    on_error: Callable[[Any, BaseException], None],
    resources: dict[str, float] | None = None,
    key_prefix: str = "emunet-group",
    keep_keys: int = 8,
) -> SubmitStats:
    """Run ``fn(item)`` for every item with ≤ `max_in_flight` futures alive at any time.

    `on_result(item, result)` and `on_error(item, exc)` run on the client as tasks finish
    (in completion order). A task that raises (e.g. its worker died three times) is passed
    to `on_error`, not retried again here.
    """
    if max_in_flight < 1:
        raise ValueError(f"Expected max_in_flight ≥ 1. Got {max_in_flight} instead.")
    resources = GPU_RESOURCES if resources is None else resources
    run = uuid.uuid4().hex[:8]
    stats = SubmitStats()
    source = iter(items)
    pending: dict[str, Any] = {}  # future key → item
    counter = itertools.count()

    def submit(item: Any) -> Future:
        key = f"{key_prefix}-{run}-{next(counter)}"
        future = client.submit(fn, item, key=key, pure=False, resources=resources, retries=0)
        pending[key] = item
        stats.submitted += 1
        if len(stats.keys) < keep_keys:
            stats.keys.append(key)
        stats.peak_in_flight = max(stats.peak_in_flight, len(pending))
        return future

    futures = as_completed([submit(item) for item in itertools.islice(source, max_in_flight)])
    for future in futures:
        item = pending.pop(future.key)
        try:
            result = future.result()
        except Exception as exc:
            stats.errored += 1
            on_error(item, exc)
        else:
            stats.finished += 1
            on_result(item, result)
        finally:
            future.release()
        for nxt in itertools.islice(source, max_in_flight - len(pending)):
            futures.add(submit(nxt))
    return stats


def task_restrictions(client: Client, prefix: str = "emunet-") -> dict[str, dict[str, float] | None]:
    """The scheduler's resource restriction of every live task whose key starts with `prefix`."""

    def collect(dask_scheduler: Any) -> dict[str, Any]:
        return {
            str(key): (dict(ts.resource_restrictions) if ts.resource_restrictions else None)
            for key, ts in dask_scheduler.tasks.items()
            if str(key).startswith(prefix)
        }

    return client.run_on_scheduler(collect)
