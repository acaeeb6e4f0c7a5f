"""One multi-GPU node as a long-lived Dask cluster for ``emunet segment --scheduler``.

An admin-facing launcher (the pipeline starts its own short-lived clusters; this one stays
up so that several runs and Prefect flows can share the node's GPUs)::

    python deploy/local/cluster.py                      # one worker per GPU, 127.0.0.1
    python deploy/local/cluster.py --host 0.0.0.0 --tls-ca-file ca.pem --tls-cert node.pem --tls-key node.key
    python deploy/local/cluster.py --cpu --workers 2    # no GPU: CPU "slots" (smoke tests)

With CUDA and dask-cuda: ``LocalCUDACluster``, one worker per GPU with
``CUDA_VISIBLE_DEVICES`` pinned. Without a GPU (or with ``--cpu``): ``LocalCluster`` with N
single-threaded worker processes. Either way every worker declares ``GPU=1``, the resource
the block tasks request. It prints the scheduler address and dashboard link, then waits
until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

SLOT = {"GPU": 1}  # the model slot: one block task at a time per worker (= per GPU); named "GPU" in Dask


def visible_gpus() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES respected); 0 without a driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def start_cluster(
    n_workers: int | None = None,
    *,
    cpu: bool = False,
    host: str = "127.0.0.1",
    scheduler_port: int = 8786,
    dashboard_address: str | None = ":8787",
    memory_limit: str | float = "auto",
    local_directory: str | None = None,
    security: Any = None,
) -> Any:
    """A local cluster whose every worker declares ``GPU=1``; the caller closes it.

    `memory_limit` is per worker ("auto" = the machine's memory / workers). `security` is a
    ``distributed.security.Security``; with it the cluster speaks ``tls://``. The dashboard
    (no authentication) listens on `host` too unless `dashboard_address` names another.
    """
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"Expected n_workers ≥ 1. Got {n_workers} instead.")
    if dashboard_address and dashboard_address.startswith(":"):
        dashboard_address = host + dashboard_address  # a bare ":port" would listen on 0.0.0.0
    common: dict[str, Any] = {
        "host": host,
        "scheduler_port": scheduler_port,
        "dashboard_address": dashboard_address,
        "threads_per_worker": 1,
        "local_directory": local_directory,
        "resources": dict(SLOT),
    }
    if memory_limit != "auto":  # LocalCluster splits the memory among workers only by default
        common["memory_limit"] = memory_limit
    if security is not None:
        common.update(protocol="tls://", security=security)
    import dask
    import distributed  # noqa: F401  (loads its config defaults before the set below saves the config)

    # Workers without Dask's sampling profiler (it slows the blocks: docs/admin.md, "Profile");
    # the nannies hand this setting to the worker processes they start.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return _start(n_workers, cpu, common)


def _start(n_workers: int | None, cpu: bool, common: dict[str, Any]) -> Any:
    gpus = 0 if cpu else visible_gpus()
    if gpus == 0:
        from distributed import LocalCluster

        n = n_workers or 2
        threads = str(max(1, (os.cpu_count() or 1) // n))  # torch intra-op threads per worker
        return LocalCluster(n_workers=n, processes=True, env={"OMP_NUM_THREADS": threads}, **common)
    if n_workers is not None and n_workers > gpus:
        raise ValueError(f"Expected at most one worker per GPU ({gpus}). Got n_workers={n_workers} instead.")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise RuntimeError(
            f"Found {gpus} GPU(s) but not dask-cuda, which pins one GPU per worker. Expected it "
            "installed (pip install dask-cuda, or emunet[cuda]); or use deploy/local/start-dask-cuda.sh, "
            "which pins GPUs by hand, or pass --cpu."
        ) from None
    return LocalCUDACluster(n_workers=n_workers or gpus, **common)


def _security(args: argparse.Namespace) -> Any:
    files = (args.tls_ca_file, args.tls_cert, args.tls_key)
    if not any(files):
        return None
    if not all(files):
        raise SystemExit("error: --tls-ca-file, --tls-cert and --tls-key go together")
    from distributed.security import Security

    roles = {
        f"tls_{role}_{kind}": path
        for role in ("scheduler", "worker", "client")
        for kind, path in (("cert", args.tls_cert), ("key", args.tls_key))
    }
    return Security(tls_ca_file=args.tls_ca_file, require_encryption=True, **roles)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep a one-node Dask cluster with one GPU worker per GPU.")
    parser.add_argument("--workers", type=int, help="workers (default: one per GPU; 2 with --cpu)")
    parser.add_argument("--cpu", action="store_true", help="ignore GPUs: CPU workers that still declare GPU=1")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = all; use TLS then)")
    parser.add_argument("--port", type=int, default=8786, help="scheduler port")
    parser.add_argument("--dashboard-address", default=":8787", help="dashboard address ('' = no dashboard)")
    parser.add_argument("--memory-limit", default="auto", help="per worker: 'auto', '48GiB' or a fraction")
    parser.add_argument("--local-directory", help="spill/scratch directory (node-local disk)")
    parser.add_argument("--tls-ca-file", help="CA certificate (PEM) for tls://")
    parser.add_argument("--tls-cert", help="this node's certificate (PEM)")
    parser.add_argument("--tls-key", help="this node's private key (PEM)")
    args = parser.parse_args(argv)

    cluster = start_cluster(
        args.workers,
        cpu=args.cpu,
        host=args.host,
        scheduler_port=args.port,
        dashboard_address=args.dashboard_address or None,
        memory_limit=args.memory_limit,
        local_directory=args.local_directory,
        security=_security(args),
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster:
        print(f"{type(cluster).__name__}: {len(cluster.workers)} worker(s), each with GPU=1")
        print(f"scheduler: {cluster.scheduler_address}")
        print(f"dashboard: {cluster.dashboard_link if args.dashboard_address else '(disabled)'}")
        print(f"run:       emunet segment IN.zarr OUT.zarr --model CKPT --scheduler {cluster.scheduler_address}")
        print("Ctrl-C stops the cluster.", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
