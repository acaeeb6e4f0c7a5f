"""Run the tasks of one stage, in this process or on Dask workers, with ledger marks.

A task is a `TaskSpec`: a picklable function of ``(job, *args)`` plus the ledger entry it
completes. It runs on a worker, writes its own output, then marks itself done there (so a
crash between the two only repeats it). Tasks already done are never submitted again.

On Dask each task is submitted on its own (`pipeline.submit.submit_bounded`: bounded
futures in flight, no graph fusion), with no resource restriction: these are CPU tasks
and share the workers with nothing else. Failures are collected, marked in the ledger and
raised together once the stage has run every other task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .layout import InstanceJob


class StageFailedError(RuntimeError):
    """Some tasks of a stage failed; the others are done and marked (``--resume`` continues)."""


@dataclass(frozen=True)
class TaskSpec:
    """``fn(job, *args)``, which completes entry ``ledger_id`` of the stage's ledger."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    ledger_id: int


def run_marked(payload: tuple[InstanceJob, str, int, TaskSpec]) -> Any:
    """Run one task (on a worker) and mark it done (or failed) in its stage ledger."""
    job, stage, n, spec = payload
    ledger = job.ledger(stage, n)
    try:
        result = spec.fn(job, *spec.args)
    except Exception as exc:
        try:
            ledger.mark_failed(spec.ledger_id, exc)
        except Exception:  # best effort: the error itself is what matters
            pass
        raise
    ledger.mark_done(spec.ledger_id)
    return result


def run_stage(job: InstanceJob, stage: str, specs: Sequence[TaskSpec], client: Any = None,
              max_in_flight: int | None = None) -> list[Any]:
    """Run the not-yet-done ``specs`` of ``stage``; their results (in completion order)."""
    n = max((s.ledger_id for s in specs), default=-1) + 1
    ledger = job.ledger(stage, n)
    done = ledger.done_mask()
    todo = [(job, stage, n, s) for s in specs if not done[s.ledger_id]]
    results: list[Any] = []
    failed: list[tuple[int, BaseException]] = []
    if client is None:
        for payload in todo:
            try:
                results.append(run_marked(payload))
            except Exception as exc:
                failed.append((payload[3].ledger_id, exc))
    else:
        from pipeline.submit import submit_bounded

        workers = len(client.scheduler_info(n_workers=-1)["workers"]) or 1
        submit_bounded(
            client, run_marked, todo,
            max_in_flight=max_in_flight or 4 * workers,
            on_result=lambda item, result: results.append(result),
            on_error=lambda item, exc: failed.append((item[3].ledger_id, exc)),
            resources={}, key_prefix=f"emunet-instances-{stage}",
        )
    if failed:
        first_id, first = failed[0]
        raise StageFailedError(
            f"expected every task of stage {stage!r} to succeed, got {len(failed)} failure(s) "
            f"(first: #{first_id}: {type(first).__name__}: {first}); the others are done: "
            "fix the cause and rerun with --resume"
        ) from first
    return results


@contextlib.contextmanager
def instance_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """None for ``workers == 0`` (this process), else a client of a scheduler or a local cluster."""
    if scheduler is not None:
        from distributed import Client

        with Client(scheduler) as client:
            yield client
        return
    if workers == 0:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client
