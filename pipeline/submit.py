"""Stream block tasks to a Dask cluster with a bounded number of futures in flight.

A terabyte volume has 10^5–10^6 blocks; one graph of that many tasks would hold the client
and the scheduler hostage. Instead the client keeps at most ``max_in_flight`` futures and
refills whenever tasks finish (``distributed.wait(..., return_when="FIRST_COMPLETED")``,
with a timeout, so that a lost scheduler is noticed)::

    groups ─► [ map ≤ max_in_flight ] ─► wait (first done) ─► gather every finished one ─► on_result
                      ▲                                                                      │
                      └──────────── one ``client.map`` for as many as finished ◄─────────────┘

The scheduler's cost is per graph update more than per task (bench/bench_submit.py: about
4 ms of scheduler CPU per task refilled one submit at a time, 0.5 ms in one map), so
everything that finished since the loop last looked is fetched in one ``gather`` and
replaced in one ``client.map``; on a large cluster, where tasks finish faster than the loop
turns, the batches grow by themselves.

Every task is its own key with ``resources={"GPU": 1}, pure=False``: never a collection's
graph, whose optimisation can fuse tasks and drop the resource annotation (dask#7036,
dask#10325). The restriction makes the scheduler run at most one block task per model slot
(`SLOT`: a GPU, or a CPU worker).

If the client loses its scheduler (the scheduler process died, the network went away),
distributed cancels every future in flight ("scheduler-connection-lost"), fetching a
finished task's result fails on the closed connection, and a future submitted while it
tries to reconnect never finishes: the loop raises `SchedulerLostError` at once instead of
waiting, and passes none of those tasks to ``on_error`` (they did not fail; they were
dropped). Whatever a worker wrote and marked done before stays done.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, wait

# The Dask resource a block task asks for: one *model slot*. A worker declares one slot per
# device it runs the model on: its GPU, or on a CPU-only cluster its CPU. The resource keeps
# the name "GPU" because that is what deployments declare (`dask worker --resources GPU=1`,
# deploy/); in the code it is a slot, whatever the device.
SLOT_RESOURCE = "GPU"
SLOT: dict[str, float] = {SLOT_RESOURCE: 1}
LOST_REASON = "scheduler-connection-lost"  # distributed's reason for the futures it drops
WAIT_S = 1.0  # while no task finishes, how often the loop looks at the client
POLL_S = 0.02  # how often `_connection_lost` looks at the client during its grace time
LOST_GRACE_S = 5.0  # a result that failed to arrive: how long to wait for the client to see a lost scheduler


class SchedulerLostError(ConnectionError):
    """The client lost its scheduler mid-run; the tasks in flight were dropped, not failed."""


@dataclass
class SubmitStats:
    """What the submission loop saw: tasks submitted and the most futures held at once."""

    submitted: int = 0
    finished: int = 0
    errored: int = 0
    peak_in_flight: int = 0
    updates: int = 0  # graph updates (``client.map`` calls) that submitted them
    keys: list[str] = field(default_factory=list)  # the first few keys (for inspection)


def model_slots(client: Client) -> int:
    """Sum of the slot resource (``GPU``) over the scheduler's workers."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return int(sum(info.get("resources", {}).get(SLOT_RESOURCE, 0) for info in workers))


def default_in_flight(client: Client, per_slot: int = 3) -> int:
    """``per_slot`` × the cluster's model slots (at least 2): enough to keep every slot fed."""
    return max(2, int(per_slot * max(model_slots(client), 1)))


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
    to `on_error`, not retried again here. Losing the scheduler raises `SchedulerLostError`
    (at once, whatever is in flight).
    """
    if max_in_flight < 1:
        raise ValueError(f"Expected max_in_flight ≥ 1. Got {max_in_flight} instead.")
    resources = SLOT if resources is None else resources
    run = uuid.uuid4().hex[:8]
    stats = SubmitStats()
    source = iter(items)
    pending: dict[str, tuple[Future, Any]] = {}  # future key → (future, item), in submission order
    counter = itertools.count()

    def submit(batch: list[Any]) -> None:
        """One graph update for the whole batch (``client.map``), each task under its own key."""
        if not batch:
            return
        keys = [f"{key_prefix}-{run}-{next(counter)}" for _ in batch]
        futures = client.map(fn, batch, key=keys, pure=False, resources=resources, retries=0)
        for key, future, item in zip(keys, futures, batch):
            pending[key] = (future, item)
        stats.submitted += len(batch)
        stats.updates += 1
        stats.keys.extend(keys[: max(0, keep_keys - len(stats.keys))])
        stats.peak_in_flight = max(stats.peak_in_flight, len(pending))

    submit(list(itertools.islice(source, max_in_flight)))
    while pending:
        ready = [key for key, (future, _) in pending.items() if future.done()]
        if not ready:  # wait for one to finish, looking at the client every WAIT_S
            if client.status != "running":
                raise _lost(client, stats, len(pending))
            try:
                with client.as_current():  # `wait` asks for the default client; emunet's clients are not
                    wait([future for future, _ in pending.values()], timeout=WAIT_S, return_when="FIRST_COMPLETED")
            except Exception:  # a timeout, or a cancelled future (looked at below)
                pass
            continue
        done = [pending.pop(key) for key in ready]
        results = _gather_finished(client, [future for future, _ in done])
        for i, (future, item) in enumerate(done):
            try:
                result = results[future.key] if future.key in results else future.result()
            except Exception as exc:
                if _connection_lost(client, future, exc):
                    raise _lost(client, stats, len(pending) + len(done) - i) from None
                stats.errored += 1
                on_error(item, exc)
            else:
                stats.finished += 1
                on_result(item, result)
            finally:
                future.release()
        submit(list(itertools.islice(source, max_in_flight - len(pending))))
    return stats


def _gather_finished(client: Client, futures: list[Future]) -> dict[Any, Any]:
    """The results of the finished futures among `futures`, fetched in one ``gather`` (one round
    trip instead of one per task); {} if that fails, and each future is then asked on its own
    (which tells a task's error from a lost scheduler)."""
    finished = [future for future in futures if future.status == "finished"]
    if len(finished) < 2:
        return {}
    try:
        return dict(zip((future.key for future in finished), client.gather(finished)))
    except Exception:
        return {}


def _connection_lost(client: Client, future: Future, exc: BaseException, grace_s: float = LOST_GRACE_S) -> bool:
    """Whether `exc`, raised by ``future.result()``, means the client lost its scheduler
    (the future was dropped, or fetching its result failed on a closed connection) rather
    than the task failing (a task's own error gives the future the status "error")."""
    if getattr(exc, "reason", None) == LOST_REASON:
        return True
    if future.status == "error" or not isinstance(exc, OSError):
        return False
    deadline = time.monotonic() + grace_s  # the client notices a closed stream a moment later
    while client.status == "running" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return client.status != "running"


def _lost(client: Client, stats: SubmitStats, in_flight: int) -> SchedulerLostError:
    address = getattr(client.scheduler, "address", None) or "(unknown address)"
    return SchedulerLostError(
        f"Expected the Dask scheduler at {address} to stay reachable. Got the connection to it lost "
        f"mid-run instead (client status {client.status!r}): the scheduler died or the network went "
        f"away, and the {in_flight} task(s) in flight were dropped ({stats.finished + stats.errored} "
        f"of the {stats.submitted} tasks submitted had reported back)"
    )


def task_restrictions(client: Client, prefix: str = "emunet-") -> dict[str, dict[str, float] | None]:
    """The scheduler's resource restriction of every live task whose key starts with `prefix`."""

    def collect(dask_scheduler: Any) -> dict[str, Any]:
        return {
            str(key): (dict(ts.resource_restrictions) if ts.resource_restrictions else None)
            for key, ts in dask_scheduler.tasks.items()
            if str(key).startswith(prefix)
        }

    return client.run_on_scheduler(collect)
