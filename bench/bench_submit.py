"""What one task costs the scheduler, by the way tasks are submitted (no-op tasks, no model).

The scale run's extrapolation to 10^6 blocks and 100 GPU workers (`bench/bench_scale.py`,
docs/benchmarks.md) finds the scheduler's cost per task the first bottleneck. This bench
separates that cost from the pipeline: the same no-op task (``resources={"GPU": 1}``, as
`pipeline.submit` submits), 600 of them, on a ``dask scheduler`` and 2 ``dask worker``
processes started as the scale run starts them (`bench/cluster_procs.py`), submitted five ways side by side:

* ``bounded``: `pipeline.submit.submit_bounded` with 6 in flight (what `segment` does: every
  task finished since the loop last looked is gathered at once and replaced in one map);
* ``bounded, one submit per finished task``: the same bound, refilled as `submit_bounded`
  did before 2026-12-03 (each finished task's result fetched and replaced on its own);
* ``one by one``: submit, wait for the result, submit the next;
* ``all, one submit each``: 600 ``client.submit`` calls, then wait;
* ``all, one map``: one ``client.map`` call (one graph update for all 600 tasks).

Per way it prints tasks per second and the scheduler's, the client's and the workers' CPU
time per task (from /proc, and this process's own), in alternating rounds (these cores drift; compare within a round).

    .venv/bin/python bench/bench_submit.py [--tasks 600] [--rounds 2] [--in-flight 6]

``--in-flight 300`` is what `segment` keeps in flight on 100 GPU workers (3 per slot).
``--workers 32 --task-ms 50 --in-flight 96 --only bounded`` emulates 32 GPUs at 50 ms per
task (the tasks sleep, so the 32 workers fit on 2 cores): ``slots_busy`` is the share of
the workers' time the submission loop kept them fed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cluster_procs import Cluster, proc_stats  # noqa: E402

from pipeline.submit import SLOT, submit_bounded  # noqa: E402


def noop(x: int) -> int:
    return x


def sleeper(seconds: float) -> Callable[[int], int]:
    """A task that keeps its worker busy for `seconds` without a CPU core (as a GPU block would)."""

    def task(x: int) -> int:
        time.sleep(seconds)
        return x

    return task


def ways(client, in_flight: int, task_s: float = 0.0) -> dict[str, Callable[[int], None]]:
    from distributed import wait

    task = sleeper(task_s) if task_s else noop

    def bounded(n: int) -> None:
        submit_bounded(client, task, range(n), max_in_flight=in_flight, on_result=lambda i, r: None,
                       on_error=lambda i, e: print(f"task {i} failed: {e}", file=sys.stderr))  # fmt: skip

    def refill_each(n: int) -> None:
        items = iter(range(n))
        pending = {client.submit(task, i, pure=False, resources=SLOT) for i in itertools.islice(items, in_flight)}
        while pending:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            for future in done:
                future.result()
                pending.update(client.submit(task, i, pure=False, resources=SLOT) for i in itertools.islice(items, 1))

    def one_by_one(n: int) -> None:
        for i in range(n):
            client.submit(task, i, pure=False, resources=SLOT).result()

    def each(n: int) -> None:
        futures = [client.submit(task, i, pure=False, resources=SLOT) for i in range(n)]
        wait(futures)

    def mapped(n: int) -> None:
        futures = client.map(task, range(n), pure=False, resources=SLOT)
        wait(futures)

    return {f"bounded ({in_flight} in flight)": bounded, "bounded, one submit per finished task": refill_each,
            "one by one": one_by_one,
            "all, one submit each": each, "all, one map": mapped}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--in-flight", type=int, default=6)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--task-ms", type=float, default=0.0,
                   help="each task sleeps this long on its worker (an emulated GPU; 0: a no-op)")
    p.add_argument("--only", default="", help="run only the ways whose name contains this (e.g. 'bounded')")
    args = p.parse_args()
    from distributed import Client

    cluster = Cluster(Path(tempfile.mkdtemp(prefix="emunet-submit-")), args.workers)
    try:
        pid = cluster.scheduler.pid
        with Client(cluster.address) as client:
            client.submit(noop, 0, pure=False, resources=SLOT).result()  # the workers answer
            for r in range(args.rounds):
                for name, run in ways(client, args.in_flight, args.task_ms / 1e3).items():
                    if args.only not in name:
                        continue
                    n = args.tasks if name != "one by one" else max(1, args.tasks // 3)
                    cpu0, own0, workers0, t0 = proc_stats(pid)[2], time.process_time(), cluster.worker_cpu(), time.perf_counter()
                    run(n)
                    seconds, cpu = time.perf_counter() - t0, proc_stats(pid)[2] - cpu0
                    workers_cpu = cluster.worker_cpu() - workers0
                    own = time.process_time() - own0  # this process: the client and its event loop thread
                    print(json.dumps({"round": r, "way": name, "in_flight": args.in_flight, "tasks": n,
                                      "tasks_per_s": round(n / seconds, 1),
                                      "scheduler_cpu_ms_per_task": round(cpu / n * 1e3, 2),
                                      "client_cpu_ms_per_task": round(own / n * 1e3, 2),
                                      "workers_cpu_ms_per_task": round(workers_cpu / n * 1e3, 2),
                                      # the share of the workers' wall their (emulated GPU) tasks kept them busy
                                      "slots_busy": round(n * args.task_ms / 1e3 / (args.workers * seconds), 3)}),
                          flush=True)  # fmt: skip
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
