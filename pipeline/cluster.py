"""Clusters for block tasks: one worker per GPU, each declaring one ``GPU`` slot.

Block tasks ask for ``resources={"GPU": 1}``, so a worker runs one at a time and owns its
device. Which cluster `connect` gives:

==========================  =================================================================
an existing scheduler       ``Client(address)``; its workers must declare ``--resources GPU=1``
CUDA and dask-cuda          ``LocalCUDACluster``: one worker per GPU, ``CUDA_VISIBLE_DEVICES``
                            pinned (the worker's own GPU first), plus the ``GPU`` resource
CUDA, no dask-cuda          the same by hand: one `Nanny` per GPU with ``CUDA_VISIBLE_DEVICES``
CPU only (tests, laptops)   ``LocalCluster(processes=True, resources={"GPU": 1})``: N worker
                            processes whose "GPU" slot is the CPU, torch threads = cores / N
==========================  =================================================================

The same code path (plugin, resources, bounded submission) runs in every case, so the CPU
tests exercise what a GPU node runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

from pipeline.submit import SLOT, model_slots

# Dask's statistical profiler samples every worker thread's stack 100 times a second for
# the dashboard's "Profile" page. On 2 CPU cores it took about 11 % of a segmenting worker's
# CPU time (8 blocks of 8 × 512 × 512, shipped model: 28.7 vs 25.5 s of worker CPU per 4
# blocks, `docs/pipeline-execution.md`), so the clusters emunet starts run without it;
# `ClusterConfig(worker_profile=True)` keeps it. Workers started by hand read the same key
# from ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED`` (docs/admin.md).
WORKER_PROFILE = "distributed.worker.profile.enabled"
LOCAL_WORKER_PRELOAD = "pipeline.local_worker"  # each local worker imports it at start (its dask_setup)


@dataclass(frozen=True)
class ClusterConfig:
    """Where block tasks run: a running scheduler, or a local cluster started for the run."""

    workers: int | None = None  # local workers; None = one per GPU (2 on a CPU-only machine)
    scheduler: str | None = None  # address of a running scheduler; set = use it, start nothing
    threads_per_worker: int = 1  # Dask task threads per worker (block tasks run one at a time)
    torch_threads: int | None = None  # intra-op threads per CPU worker; None = cores / workers
    timeout_s: float = 60.0  # how long to wait for a worker with a GPU slot
    connect_timeout_s: float = 5.0  # reaching the scheduler's address and its handshake
    worker_profile: bool = False  # local workers run Dask's statistical profiler (see WORKER_PROFILE)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"Expected workers ≥ 1. Got {self.workers} instead.")
        if self.workers is not None and self.scheduler is not None:
            raise ValueError(
                f"Expected either workers (a local cluster) or a scheduler address. Got both: "
                f"workers={self.workers}, scheduler={self.scheduler!r}"
            )
        if self.threads_per_worker < 1:
            raise ValueError(f"Expected threads_per_worker ≥ 1. Got {self.threads_per_worker} instead.")


@dataclass
class Cluster:
    """A connected client, what it runs on, and the torch threads the workers should use."""

    client: Client
    kind: str  # "scheduler", "local-cuda", "local-gpu" or "local-cpu"
    slots: int  # GPU slots (block tasks that can run at once)
    torch_threads: int | None

    @property
    def dashboard(self) -> str | None:
        """The Dask dashboard's URL (None where the scheduler serves none)."""
        try:
            return self.client.dashboard_link or None
        except Exception:  # pragma: no cover - no HTTP server on that scheduler
            return None


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA or without torch's CUDA build)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken driver counts as no GPU
        return 0


def wait_for_slots(client: Client, timeout_s: float) -> int:
    """Block until at least one worker declares a model slot (the ``GPU`` resource); the slot count."""
    import time

    deadline = time.monotonic() + timeout_s
    while (slots := model_slots(client)) < 1:
        if time.monotonic() > deadline:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            raise TimeoutError(
                f"Expected a worker declaring a 'GPU' resource at {client.scheduler.address} within "
                f"{timeout_s:.0f} s. Got {len(workers)} worker(s) without one instead; start them with "
                "`dask worker ADDRESS --nworkers 1 --nthreads 1 --resources GPU=1` (one per GPU)"
            )
        time.sleep(0.2)
    return slots


def _memory_per_worker(n: int) -> int:
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT // max(n, 1))


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started inside ignore SIGINT (Ctrl-C), which then reaches only this one.

    Ctrl-C in a terminal signals the whole foreground process group: local Dask workers (and
    a temporary Prefect server) would die with tracebacks while the client is still stopping
    the run cleanly. An ignored signal stays ignored across fork and exec, and Python does
    not install its KeyboardInterrupt handler in a process that starts with SIGINT ignored.
    Only the main thread may change signal handlers; elsewhere this does nothing.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def local_cluster(config: ClusterConfig) -> tuple[Any, str, int | None]:
    """Start a local cluster for `config`: (cluster, kind, torch threads per worker).

    The workers ignore Ctrl-C (`children_ignore_sigint`): the client stops the run and
    closes them, and they drop the heartbeat tracebacks of that close (`pipeline.local_worker`,
    their preload). They run without Dask's statistical profiler unless
    ``config.worker_profile`` (each nanny hands its worker the configuration it was made in)."""
    with children_ignore_sigint(), dask.config.set({WORKER_PROFILE: config.worker_profile}):
        return _local_cluster(config)


def _local_cluster(config: ClusterConfig) -> tuple[Any, str, int | None]:
    common: dict[str, Any] = {"dashboard_address": "127.0.0.1:0", "silence_logs": logging.WARNING}  # a free port
    preload = {"preload": [LOCAL_WORKER_PRELOAD]}  # quiet about the scheduler closing (pipeline/local_worker.py)
    gpus = gpu_count()
    if gpus:
        n = config.workers or gpus
        if n > gpus:
            raise ValueError(f"Expected at most one worker per GPU ({gpus}). Got workers={n} instead.")
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return _pinned_gpu_cluster(n, config.threads_per_worker, common), "local-gpu", config.torch_threads
        cluster = LocalCUDACluster(
            n_workers=n, threads_per_worker=config.threads_per_worker, resources=SLOT, **common, **preload
        )
        return cluster, "local-cuda", config.torch_threads
    n = config.workers or 2
    threads = config.torch_threads or max(1, (os.cpu_count() or 1) // n)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=config.threads_per_worker,
        processes=True,
        resources=SLOT,
        **common,
        **preload,
    )
    return cluster, "local-cpu", threads


def _pinned_gpu_cluster(n: int, threads: int, common: dict[str, Any]) -> Any:
    """One Nanny per GPU with ``CUDA_VISIBLE_DEVICES`` rotated so its own GPU is device 0."""
    from distributed import Nanny, Scheduler, SpecCluster

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(gpu_count())]
    workers = {
        f"gpu-{devices[i]}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads,
                "resources": dict(SLOT),
                "env": {"CUDA_VISIBLE_DEVICES": ",".join(devices[i:] + devices[:i])},
                "memory_limit": _memory_per_worker(n),
                "preload": [LOCAL_WORKER_PRELOAD],
            },
        }
        for i in range(n)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": common["dashboard_address"]}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=common["silence_logs"])


class _QuietConnectionLoss(logging.Filter):
    """Tracebacks distributed logs when the scheduler goes away, which `SchedulerLostError`
    reports once, clearly: the client's batched stream failing a send (``CommClosedError``:
    the line stays, without its traceback), and closing a client that is reconnecting (its
    reconnect task cancelled: nothing went wrong, the record is dropped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        import asyncio

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError):
            return False
        if exc is not None and type(exc).__name__ == "CommClosedError":
            record.exc_info, record.exc_text = None, None
        return True


class _InterruptedSyncCall(logging.Filter):
    """A Ctrl-C that lands in a blocking client call (``client.gather``, ``wait``, ...) before
    distributed's ``sync`` has started its coroutine makes the cancel callback it schedules
    fail with a ``NameError`` on the event loop (distributed/utils.py, ``sync.<locals>.cancel``;
    tornado logs it with a traceback). Nothing was running to cancel, and the run is stopping
    cleanly: that record is dropped, every other one kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc, tb = (record.exc_info[1], record.exc_info[2]) if record.exc_info else (None, None)
        if not isinstance(exc, NameError) or tb is None:
            return True
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        return not (code.co_name == "cancel" and code.co_filename.replace("\\", "/").endswith("distributed/utils.py"))


QUIET_LOGGERS = {"distributed.client": _QuietConnectionLoss, "distributed.batched": _QuietConnectionLoss,
                 "tornado.application": _InterruptedSyncCall}  # fmt: skip


@contextlib.contextmanager
def _closing(client: Client) -> Iterator[Client]:
    """`client`, closed on exit; quiet about losing its scheduler (see `SchedulerLostError`)
    and about a Ctrl-C that interrupts a call to it (`_InterruptedSyncCall`)."""
    filters = {name: kind() for name, kind in QUIET_LOGGERS.items()}
    for name, quiet in filters.items():
        logging.getLogger(name).addFilter(quiet)
    try:
        with contextlib.closing(client):
            yield client
    finally:
        for name, quiet in filters.items():
            logging.getLogger(name).removeFilter(quiet)


def probe_scheduler(address: str, timeout_s: float) -> None:
    """Fail fast on an address where no Dask scheduler can be: nothing listening, no answer.

    A TCP connection is tried first (a closed port answers at once); ``tcp://`` and
    ``tls://`` addresses only, other comms are left to Dask.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ValueError(f"expected a scheduler address like tcp://HOST:8786, got {address!r}")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        raise ConnectionError(
            f"Expected a Dask scheduler at {address}. Got nothing listening there (connection refused); start one "
            "with `dask scheduler`, check the port (the scheduler's default is 8786), or drop --scheduler to run locally"
        ) from None
    except OSError as exc:
        raise ConnectionError(
            f"Expected a Dask scheduler at {address}. Got no connection within {timeout_s:g} s ({exc or type(exc).__name__}); "
            "check the host and port and that a firewall lets it through (EMUNET_SEGMENT_CONNECT_TIMEOUT_S sets the limit)"
        ) from None


def _what_answers(address: str, timeout_s: float) -> str:
    """A guess at what listens at `address`, for the message when the Dask handshake fails."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: emunet\r\n\r\n")
            first = sock.recv(128)
    except OSError:
        return "something that does not answer Dask's handshake"
    if first.startswith(b"HTTP/"):
        line = first.split(b"\r\n", 1)[0].decode(errors="replace")
        return f"an HTTP server ({line}; the Dask dashboard listens on 8787, the scheduler on 8786)"
    return "something that does not speak Dask's protocol"


def connect_client(address: str, timeout_s: float) -> Client:
    """A `Client` of the scheduler at `address`, or a `ConnectionError` within about `timeout_s`.

    The handshake runs in a helper thread with a deadline: a server that accepts the
    connection but never answers in Dask's protocol (an HTTP server, a wrong service) made
    `Client` wait for many minutes. The client is not made the process's default: a
    handshake abandoned here would otherwise stay the default, and the next dask
    computation in this process (xarray's ``.compute()`` in the same notebook or flow
    worker) would wait on it for ever. emunet passes its clients explicitly.
    """
    import threading

    probe_scheduler(address, timeout_s)
    made: dict[str, Any] = {}

    def make() -> None:
        try:
            made["client"] = Client(address, timeout=timeout_s, set_as_default=False)
        except BaseException as exc:  # reported below
            made["error"] = exc

    thread = threading.Thread(target=make, name="emunet-connect", daemon=True)
    thread.start()
    thread.join(timeout_s + 2.0)
    if "client" in made:
        return made["client"]
    detail = f"no Dask handshake within {timeout_s:g} s" if thread.is_alive() else f"{made.get('error')}"
    raise ConnectionError(
        f"Expected a Dask scheduler at {address}. Got {_what_answers(address, min(timeout_s, 3.0))} instead ({detail}); "
        "point --scheduler at the scheduler's address (tcp://HOST:8786), or drop it to run locally"
    )


@contextlib.contextmanager
def connect(config: ClusterConfig = ClusterConfig()) -> Iterator[Cluster]:
    """A client on the configured cluster; a cluster started here is closed on exit."""
    if config.scheduler is not None:
        client = connect_client(config.scheduler, config.connect_timeout_s)
        with _closing(client):
            slots = wait_for_slots(client, config.timeout_s)
            yield Cluster(client, "scheduler", slots, config.torch_threads)
        return
    cluster, kind, threads = local_cluster(config)
    with cluster, _closing(Client(cluster, set_as_default=False)) as client:
        slots = wait_for_slots(client, config.timeout_s)
        yield Cluster(client, kind, slots, threads)
