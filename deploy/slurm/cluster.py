"""Dask GPU workers as SLURM jobs (dask-jobqueue), one Dask worker per GPU.

`make_cluster(SlurmConfig(...))` starts a scheduler in this process and returns a
``dask_jobqueue.SLURMCluster`` whose jobs each book ``gpus_per_job`` GPUs through gres and
run one worker per GPU, every worker declaring ``--resources GPU=1``::

    this process (login/service node)         SLURM job (one per node share)
    ┌──────────────────────────────┐  tcp  ┌───────────────────────────────────────────┐
    │ scheduler :8786, dashboard   │◄──────┤ #SBATCH --gres=gpu:N --cpus-per-task --mem │
    │ SLURMCluster: sbatch/scancel │       │ worker 0 (GPU 0, GPU=1) … worker N-1       │
    └──────────────────────────────┘       └───────────────────────────────────────────┘

Per-GPU pinning. SLURM sets ``CUDA_VISIBLE_DEVICES`` to the job's GPUs, and the plain
``dask worker --nworkers N`` that dask-jobqueue runs gives every process that same list, so
all N workers would share device 0. Hence:

* ``gpus_per_job == 1`` (the default, and the simplest): the plain ``dask worker``, one
  worker per job, owning the job's only GPU.
* ``gpus_per_job > 1``: ``python -m dask_cuda.cli`` (dask-cuda's worker, which pins
  ``CUDA_VISIBLE_DEVICES`` per process). dask-jobqueue names its workers ``NAME-0`` …
  ``NAME-{N-1}`` like dask-cuda does, so scaling and adaptivity count them right.

Fields left ``None`` fall back to ``~/.config/dask/jobqueue.yaml`` (``jobqueue.slurm.*``;
see ``deploy/slurm/jobqueue.yaml``). Run as a script to start a cluster and keep it::

    python deploy/slurm/cluster.py emunet-slurm.yaml            # prints the address, waits
    python deploy/slurm/cluster.py emunet-slurm.yaml --dry-run  # prints the job script only
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

LAUNCHERS = ("auto", "dask", "dask-cuda")
ENV_PREFIX = "EMUNET_SLURM_"
NO_PROFILER = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"


@dataclass(frozen=True)
class SlurmConfig:
    """One SLURM job = ``gpus_per_job`` GPUs = as many Dask workers, each with ``GPU=1``."""

    job_name: str | None = "emunet-gpu"  # #SBATCH -J (what squeue shows); None = jobqueue.slurm.name
    partition: str | None = None  # #SBATCH -p; None = jobqueue.slurm.queue
    account: str | None = None  # #SBATCH -A; None = jobqueue.slurm.account
    gpus_per_job: int = 1  # #SBATCH --gres=gpu:N; one Dask worker per GPU
    gpu_type: str | None = None  # --gres=gpu:TYPE:N (e.g. "a100"); None = any GPU
    cores: int = 8  # CPU cores booked per job (--cpus-per-task), shared by its workers
    memory: str = "64GiB"  # host memory per job (--mem), split evenly among its workers
    walltime: str = "04:00:00"  # #SBATCH -t (SLURM formats: MM, HH:MM:SS, D-HH:MM:SS, …)
    threads_per_worker: int = 1  # Dask task threads per worker (GPU tasks run one at a time)
    launcher: str = "auto"  # "dask", "dask-cuda", or "auto" = dask-cuda when gpus_per_job > 1
    job_extra_directives: tuple[str, ...] = ()  # more #SBATCH lines, e.g. ("--constraint=a100",)
    job_script_prologue: tuple[str, ...] = ()  # shell lines before the worker (module load, venv)
    local_directory: str | None = "${TMPDIR:-/tmp}"  # node-local scratch (expanded on the node)
    log_directory: str | None = None  # SLURM -o/-e files; None = jobqueue.slurm.log-directory
    python: str | None = None  # Python on the nodes; None = jobqueue.slurm.python or this one
    interface: str | None = None  # NIC for scheduler and workers (e.g. "ib0"); None = default
    scheduler_host: str | None = None  # address the scheduler binds; None = from `interface`
    dashboard_address: str | None = "127.0.0.1:8787"  # no auth: reach it by `ssh -L`; None = off
    retire_margin: str | None = "10m"  # retire workers this long before walltime; None = never
    jobs: int = 0  # jobs submitted at start when not adaptive
    minimum_jobs: int = 1  # adaptive floor (≥ 1: `emunet segment` waits for a GPU worker first)
    maximum_jobs: int | None = None  # adaptive ceiling; None = fixed size (`jobs`)

    def __post_init__(self) -> None:
        from dask.utils import parse_bytes

        for name in ("gpus_per_job", "cores", "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} ≥ 1. Got {getattr(self, name)} instead.")
        if self.cores < self.gpus_per_job * self.threads_per_worker:
            raise ValueError(
                f"Expected cores ≥ gpus_per_job × threads_per_worker "
                f"({self.gpus_per_job * self.threads_per_worker}). Got cores={self.cores} instead."
            )
        try:
            parse_bytes(self.memory)
        except ValueError:
            raise ValueError(f"Expected memory like '64GiB'. Got {self.memory!r} instead.") from None
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"Expected launcher in {LAUNCHERS}. Got {self.launcher!r} instead.")
        if self.launcher == "dask" and self.gpus_per_job > 1:
            raise ValueError(
                f"Expected gpus_per_job == 1 with launcher='dask' (dask worker --nworkers does not "
                f"pin CUDA_VISIBLE_DEVICES per process). Got {self.gpus_per_job} instead; use "
                "launcher='dask-cuda' (or 'auto') for several GPUs per job."
            )
        if any(d.lstrip("-").startswith(("gres", "gpus")) for d in self.job_extra_directives):
            raise ValueError(
                f"Expected no GPU request in job_extra_directives (set by gpus_per_job/gpu_type). "
                f"Got {list(self.job_extra_directives)} instead."
            )
        if self.jobs < 0 or self.minimum_jobs < 0:
            raise ValueError(f"Expected jobs, minimum_jobs ≥ 0. Got {self.jobs}, {self.minimum_jobs} instead.")
        if self.maximum_jobs is not None and self.maximum_jobs < max(1, self.minimum_jobs):
            raise ValueError(
                f"Expected maximum_jobs ≥ max(1, minimum_jobs={self.minimum_jobs}). "
                f"Got {self.maximum_jobs} instead."
            )
        if not isinstance(self.walltime, str):  # YAML 1.1 reads an unquoted 4:00:00 as 14400
            raise ValueError(f"Expected walltime as a quoted string like '04:00:00'. Got {self.walltime!r} instead.")
        walltime_seconds(self.walltime)  # validates the format
        if self.retire_margin is not None:
            self.lifetime()  # validates the margin against the walltime

    @property
    def worker_command(self) -> str:
        """The worker module dask-jobqueue runs with ``python -m``."""
        cuda = self.launcher == "dask-cuda" or (self.launcher == "auto" and self.gpus_per_job > 1)
        return "dask_cuda.cli" if cuda else "distributed.cli.dask_worker"

    def gres(self) -> str:
        kind = f"{self.gpu_type}:" if self.gpu_type else ""
        return f"--gres=gpu:{kind}{self.gpus_per_job}"

    def lifetime(self) -> tuple[int, int] | None:
        """(lifetime, stagger) in seconds: retire between walltime − 1.25·margin and − 0.75·margin."""
        from dask.utils import parse_timedelta

        if self.retire_margin is None:
            return None
        try:
            margin = int(parse_timedelta(self.retire_margin, default="s"))
        except (KeyError, ValueError, TypeError):
            raise ValueError(
                f"Expected retire_margin like '10m' or '600s'. Got {self.retire_margin!r} instead."
            ) from None
        total = walltime_seconds(self.walltime)
        if not 0 < margin < total // 2:
            raise ValueError(
                f"Expected retire_margin below half the walltime ({total // 2} s). "
                f"Got {self.retire_margin!r} ({margin} s) instead; set it to None to keep workers to the end."
            )
        return total - margin, margin // 4

    def prologue(self) -> list[str]:
        """Shell lines before the worker starts: the user's, then thread and lifetime settings."""
        lines = list(self.job_script_prologue)
        lines.append(f"export OMP_NUM_THREADS={max(1, self.cores // self.gpus_per_job)}")
        lines.append(f"export {NO_PROFILER}")  # Dask's sampling profiler slows blocks (docs/admin.md)
        if (life := self.lifetime()) is not None:
            lines.append(f"export DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION={life[0]}s")
            lines.append(f"export DASK_DISTRIBUTED__WORKER__LIFETIME__STAGGER={life[1]}s")
        return lines

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> SlurmConfig:
        """`values` (e.g. a parsed YAML file), then ``EMUNET_SLURM_<FIELD>`` for scalar fields."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Expected keys among {sorted(known)}. Got unknown {unknown} instead.")
        merged = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        env = os.environ if environ is None else environ
        for name, f in known.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or "tuple" in str(f.type):
                continue
            if "None" in str(f.type) and raw.strip().lower() in ("", "none"):
                merged[name] = None
            elif str(f.type).startswith("int"):
                try:
                    merged[name] = int(raw)
                except ValueError:
                    raise ValueError(
                        f"Expected {ENV_PREFIX}{name.upper()} to be an integer. Got {raw!r} instead."
                    ) from None
            else:
                merged[name] = raw
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> SlurmConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"Expected a mapping of SlurmConfig fields in {path}. Got {type(data).__name__} instead.")
        return cls.from_mapping(data, environ)


def walltime_seconds(text: str) -> int:
    """Seconds in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S."""
    error = ValueError(f"Expected a SLURM walltime like '04:00:00' or '1-00:00:00'. Got {text!r} instead.")
    days, dash, rest = str(text).strip().partition("-")
    if not dash:
        days, rest = "0", days
    try:
        parts = [int(p) for p in rest.split(":")]
        d = int(days)
    except ValueError:
        raise error from None
    if dash and 1 <= len(parts) <= 3:
        h, m, s = (parts + [0, 0])[:3]
    elif not dash and len(parts) == 3:
        h, m, s = parts
    elif not dash and 1 <= len(parts) <= 2:
        h, m, s = 0, parts[0], (parts[1] if len(parts) == 2 else 0)
    else:
        raise error
    total = ((d * 24 + h) * 60 + m) * 60 + s
    if min(d, h, m, s) < 0 or total <= 0:
        raise error
    return total


def make_cluster(config: SlurmConfig, *, security: Any = None) -> Any:
    """A ``SLURMCluster`` for `config` (scheduler started here; jobs per `jobs`/`maximum_jobs`).

    `security` is a ``distributed.security.Security`` with file paths (CA, cert, key) that
    the nodes can read; the workers get ``--tls-*`` flags and the address becomes ``tls://``.
    """
    from dask_jobqueue import SLURMCluster

    n = config.gpus_per_job
    scheduler_options: dict[str, Any] = {"dashboard_address": config.dashboard_address}
    if config.scheduler_host is not None:
        scheduler_options["host"] = config.scheduler_host
    optional = {
        "job_name": config.job_name,
        "queue": config.partition,
        "account": config.account,
        "log_directory": config.log_directory,
        "python": config.python,
        "interface": config.interface,
        "local_directory": config.local_directory,
    }
    cluster = SLURMCluster(
        cores=n * config.threads_per_worker,  # Dask threads: threads_per_worker per GPU worker
        job_cpu=config.cores,  # what SLURM books (I/O, decompression, torch host work)
        processes=n,
        memory=config.memory,
        walltime=config.walltime,
        job_extra_directives=[config.gres(), *config.job_extra_directives],
        job_script_prologue=config.prologue(),
        worker_command=config.worker_command,
        worker_extra_args=["--resources", "GPU=1"],
        scheduler_options=scheduler_options,
        security=security,
        **{k: v for k, v in optional.items() if v is not None},
    )
    if config.maximum_jobs is not None:
        cluster.adapt(minimum_jobs=config.minimum_jobs, maximum_jobs=config.maximum_jobs)
    elif config.jobs:
        cluster.scale(jobs=config.jobs)
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start Dask GPU workers as SLURM jobs and keep the cluster.")
    parser.add_argument("config", type=Path, help="YAML file of SlurmConfig fields (EMUNET_SLURM_* override)")
    parser.add_argument("--dry-run", action="store_true", help="print the job script and exit (submits nothing)")
    parser.add_argument("--scheduler-file", type=Path, help="also write the scheduler's address to this JSON file")
    args = parser.parse_args(argv)
    config = SlurmConfig.from_yaml(args.config)
    if args.dry_run:  # a throw-away scheduler on 127.0.0.1: the address in the script is a stand-in
        config = replace(config, jobs=0, maximum_jobs=None, dashboard_address=None, scheduler_host="127.0.0.1")
    with make_cluster(config) as cluster:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        if args.scheduler_file:
            from distributed import Client

            with Client(cluster) as client:
                client.write_scheduler_file(str(args.scheduler_file))
        print(f"scheduler: {cluster.scheduler_address}")
        print(f"dashboard: {cluster.dashboard_link}")
        print("Ctrl-C (or SIGTERM) cancels the jobs and stops the scheduler.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
