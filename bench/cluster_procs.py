"""Processes the benchmarks measure: a Dask scheduler and workers started as separate
``dask`` CLI processes (as an admin starts them), and a process's CPU time and memory from
/proc. Shared by `bench/bench_scale.py` and `bench/bench_submit.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> tuple[int, int, float]:
    """(VmHWM bytes, VmRSS bytes, CPU seconds user+system) of a live process (0s if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = {k: v for k, _, v in (line.partition(":") for line in f)}
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        return int(status["VmHWM"].split()[0]) * 1024, int(status["VmRSS"].split()[0]) * 1024, cpu
    except (OSError, KeyError, IndexError):
        return 0, 0, 0.0


class Sampler(threading.Thread):
    """Polls a process's peak RSS and CPU time until it exits (the last values seen)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self.cpu = pid, every_s, 0, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            hwm, rss, cpu = proc_stats(self.pid)
            if hwm:
                self.peak, self.cpu = max(self.peak, hwm, rss), max(self.cpu, cpu)
            self.done.wait(self.every_s)


class Cluster:
    """A `dask scheduler` and `workers` × `dask worker --nthreads 1 --resources GPU=1`."""

    def __init__(self, workdir: Path, workers: int, profile: bool = False) -> None:
        self.file = workdir / "scheduler.json"
        self.file.unlink(missing_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
               # as deploy/ starts workers: without Dask's sampling profiler (docs/admin.md, "Profile")
               "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": str(profile)}  # fmt: skip
        quiet = {"stdout": subprocess.DEVNULL, "stderr": open(workdir / "cluster.log", "a"), "env": env, "cwd": ROOT}
        self.scheduler = subprocess.Popen([BIN / "dask", "scheduler", "--scheduler-file", self.file, "--port", "0",
                                           "--no-dashboard"], **quiet)  # fmt: skip
        while not self.file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [
            subprocess.Popen([BIN / "dask", "worker", self.address, "--nthreads", "1", "--resources", "GPU=1",
                              "--no-dashboard", "--memory-limit", "0"], **quiet)  # fmt: skip
            for _ in range(workers)
        ]
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            self.worker_pids = list(client.run(os.getpid).values())  # the worker processes (not the nannies)

    def worker_cpu(self) -> float:
        return sum(proc_stats(pid)[2] for pid in self.worker_pids)

    def scheduler_stats(self) -> tuple[int, int, float]:
        return proc_stats(self.scheduler.pid)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
