"""Run a group of blocks through read → compute → write on one worker, overlapped.

A Dask task hands a few consecutive block ids to `run_group`. Three stages run at once,
joined by bounded queues, so the device computes block *b* while block *b+1* is read and
block *b−1* is written::

    reader thread            task thread (the device)        writer thread
    read(b+1) ──► [in-queue] ──► compute(b) ──► [out-queue] ──► write(b−1), mark_done(b−1)

At most ``depth`` blocks wait in each queue, so a worker holds a bounded number of blocks
(``2·depth + 2 + compute_threads`` at most: the queues plus one per thread) whatever the
group size. Several compute threads may share the device (one thread's host work overlapping
the other's kernels); with `unetcore.predict.TilePredictor` on an H200 two were slower than
one, so one is the default. ``depth=0`` drops the reader and writer threads: each block is
read, computed, written and marked in the calling thread before the next (the same steps,
`_Stages`, and the same report).

Failure policy (daisy resubmitted a failing block forever; here it fails once):

* transient I/O errors (`OSError` such as timeouts and dropped connections, minus the
  deterministic ones: missing files, permissions; and the object-store clients' network
  errors that are not `OSError`: botocore's "could not connect" / "connection closed" and
  aiohttp's truncated bodies and dropped connections) are retried ``attempts`` times with
  exponential back-off, in the read and write stages only;
* anything else fails its block at once; the block is reported as a `BlockFailure` (id,
  stage, coordinates, error) and the group carries on with its other blocks.

Nothing here knows Dask, Zarr or the model: the stages are plain callables (`BlockOps`),
so the engine is tested on its own and reused by the Dask task in `pipeline.worker`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


# Network errors of the object-store clients (s3fs → aiobotocore → aiohttp) that are not
# `OSError`s, by qualified class name (any class in the error's MRO), so this module imports
# none of them. Seen through a fault proxy (tests/reliability/test_s3_faults.py): a reset
# before the response gives botocore's EndpointConnectionError, a body cut short gives
# aiohttp's ClientPayloadError, once s3fs's own retries are spent. Read timeouts
# (botocore's ReadTimeoutError) are `OSError`s already.
_TRANSIENT_NETWORK_ERRORS = frozenset(
    {
        "botocore.exceptions.HTTPClientError",  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
        "botocore.exceptions.ConnectionError",  # EndpointConnectionError, ConnectTimeoutError
        "botocore.exceptions.IncompleteReadError",
        "aiohttp.client_exceptions.ClientConnectionError",  # ServerDisconnectedError, …
        "aiohttp.client_exceptions.ClientPayloadError",  # a body cut short
        "http.client.IncompleteRead",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for transient I/O errors; every other error fails the block once."""

    attempts: int = 3  # tries per read or write (1 = no retry)
    backoff_s: float = 0.5  # wait before the second try; doubled for each further try
    max_backoff_s: float = 10.0  # cap on one wait

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Expected attempts ≥ 1. Got {self.attempts} instead.")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"Expected non-negative back-off times. Got {self.backoff_s}, {self.max_backoff_s} instead.")

    @staticmethod
    def is_transient(exc: BaseException) -> bool:
        """True for I/O errors that may pass on a retry (timeouts, resets, throttling)."""
        if isinstance(exc, OSError):
            return not isinstance(exc, _PERMANENT_OS_ERRORS)
        return any(f"{c.__module__}.{c.__qualname__}" in _TRANSIENT_NETWORK_ERRORS for c in type(exc).__mro__)

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def with_retries(
    fn: Callable[[], Any], policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep
) -> tuple[Any, int]:
    """``(fn(), tries)``, retrying transient errors; the last error is raised with ``.tries``."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(), attempt
        except Exception as exc:
            if attempt == policy.attempts or not policy.is_transient(exc):
                exc.tries = attempt  # type: ignore[attr-defined]
                raise
            sleep(policy.wait(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class BlockOps:
    """The stages of one block, as callables over its id (built on the worker)."""

    read: Callable[[int], Any]  # block id → input array (with context)
    compute: Callable[[int, Any], Any]  # (block id, input) → output array
    write: Callable[[int, Any], None]  # (block id, output) → whole chunks written
    mark_done: Callable[[int], None] | None = None  # after the write (the ledger)
    mark_failed: Callable[[int, BaseException], None] | None = None  # record a failure (best effort)
    describe: Callable[[int], dict[str, Any]] = lambda block_id: {}  # coordinates for reports
    voxels: Callable[[int], int] = lambda block_id: 0  # output voxels of the block


@dataclass(frozen=True)
class BlockFailure:
    """One block that failed for good: where, in which stage, and why (JSON-able)."""

    block_id: int
    stage: str  # "read", "compute", "write", "ledger" or "task"
    error: str  # "TypeName: message"
    tries: int = 1
    where: dict[str, Any] = field(default_factory=dict)  # e.g. write_roi / read_roi
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockFailure:
        return cls(**data)


@dataclass
class GroupReport:
    """What one group of blocks did: ids done, failures, voxels and stage times (JSON-able)."""

    done: list[int] = field(default_factory=list)
    failed: list[BlockFailure] = field(default_factory=list)
    voxels: int = 0  # output voxels written
    seconds: dict[str, float] = field(default_factory=dict)  # busy time per stage, and "wall"
    worker: str = ""
    model_loads: int = 0  # models the worker process has loaded so far

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [f.to_dict() for f in self.failed]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupReport:
        data = dict(data)
        data["failed"] = [BlockFailure.from_dict(f) for f in data.get("failed", [])]
        return cls(**data)


_END = object()  # end-of-stream marker between stages


@dataclass
class _Failed:
    block_id: int
    stage: str
    exc: BaseException
    tries: int


def error_text(exc: BaseException, text: str | None = None) -> str:
    """``"TypeName: message"`` (or `text`), plus the explicit cause when it says more.

    s3fs turns an S3 error response into a bare `OSError` (a 503 SlowDown becomes
    ``[Errno 16] <the server's message>``); the S3 error code survives only in the cause
    (``ClientError: An error occurred (SlowDown) when calling the PutObject operation…``).
    """
    text = text or f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (from {type(cause).__name__}: {cause})"
    return text


def run_group(
    block_ids: Sequence[int],
    ops: BlockOps,
    policy: RetryPolicy = RetryPolicy(),
    *,
    depth: int = 1,
    compute_threads: int = 1,
    worker: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> GroupReport:
    """Read, compute and write `block_ids` in a three-stage pipeline; never raises per block.

    ``depth`` ≥ 1: the stages overlap, joined by queues of that depth. ``depth=0``: one
    block after another in the calling thread (read, compute, write, mark), no helper
    threads, where handing tiny blocks between threads costs about what the overlap saves
    (docs/pipeline-execution.md). ``compute_threads`` > 1 runs the compute stage in
    that many threads sharing the device: on a GPU one thread's CPU work (normalising,
    padding, copying tiles) then overlaps the other's kernels. Blocks may then finish out of
    order.
    """
    if depth < 0 or compute_threads < 1 or (depth == 0 and compute_threads > 1):
        raise ValueError(
            f"Expected a queue depth ≥ 0 and compute threads ≥ 1 (one with depth 0). Got {depth}, {compute_threads} instead."
        )
    stages = _Stages(ops, policy, sleep, worker)
    start = time.perf_counter()
    if depth == 0:
        for block_id in block_ids:
            stages.finish(stages.compute(stages.read(block_id)))
    else:
        _run_overlapped(block_ids, stages, depth, compute_threads)
    report = stages.report
    report.seconds = {**{k: round(v, 6) for k, v in stages.busy.items()}, "wall": round(time.perf_counter() - start, 6)}
    return report


class _Stages:
    """One block's steps, shared by the serial and the overlapped runs: each returns what
    the next step takes (or a `_Failed`) and adds its busy time; the report is filled here."""

    def __init__(self, ops: BlockOps, policy: RetryPolicy, sleep: Callable[[float], None], worker: str) -> None:
        self.ops, self.policy, self.sleep, self.worker = ops, policy, sleep, worker
        self.busy = {"read": 0.0, "compute": 0.0, "write": 0.0}
        self.report = GroupReport(worker=worker)
        self.lock = threading.Lock()

    def read(self, block_id: int) -> Any:
        t0 = time.perf_counter()
        try:
            item: Any = (block_id, with_retries(lambda: self.ops.read(block_id), self.policy, self.sleep)[0])
        except Exception as exc:
            item = _Failed(block_id, "read", exc, getattr(exc, "tries", 1))
        self.busy["read"] += time.perf_counter() - t0
        return item

    def compute(self, item: Any) -> Any:
        if isinstance(item, _Failed):
            return item
        block_id, data = item
        t0 = time.perf_counter()
        try:
            item = (block_id, self.ops.compute(block_id, data))
        except Exception as exc:  # deterministic: no retry
            item = _Failed(block_id, "compute", exc, 1)
        with self.lock:
            self.busy["compute"] += time.perf_counter() - t0
        return item

    def finish(self, item: Any) -> None:
        """The last step of a computed block: its write (then its ledger mark), or its failure."""
        if isinstance(item, _Failed):
            self.record(item)
            return
        t0 = time.perf_counter()
        try:
            self.write(*item)
        finally:
            self.busy["write"] += time.perf_counter() - t0

    def write(self, block_id: int, result: Any) -> None:
        ops = self.ops
        try:
            with_retries(lambda: ops.write(block_id, result), self.policy, self.sleep)
        except Exception as exc:
            self.record(_Failed(block_id, "write", exc, getattr(exc, "tries", 1)))
            return
        try:
            if ops.mark_done is not None:
                with_retries(lambda: ops.mark_done(block_id), self.policy, self.sleep)
        except Exception as exc:
            self.record(_Failed(block_id, "ledger", exc, getattr(exc, "tries", 1)))
        else:
            with self.lock:
                self.report.done.append(block_id)
                self.report.voxels += ops.voxels(block_id)

    def record(self, failed: _Failed) -> None:
        try:
            where = self.ops.describe(failed.block_id)
        except Exception:  # a report must never fail
            where = {}
        if self.ops.mark_failed is not None:
            try:
                self.ops.mark_failed(failed.block_id, failed.exc)
            except Exception:  # the report below still carries the failure
                pass
        with self.lock:
            self.report.failed.append(
                BlockFailure(failed.block_id, failed.stage, error_text(failed.exc), failed.tries, where, self.worker)
            )


def _run_overlapped(block_ids: Sequence[int], stages: _Stages, depth: int, compute_threads: int) -> None:
    """The three stages in three threads (more for compute), joined by bounded queues."""
    inbox: queue.Queue = queue.Queue(maxsize=depth)
    outbox: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()  # set when the compute stage aborts: the reader stops early

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for block_id in block_ids:
                if stop.is_set() or not put(inbox, stages.read(block_id)):
                    return
        finally:
            put(inbox, _END)

    def writer() -> None:
        while (item := outbox.get()) is not _END:
            stages.finish(item)

    def take(q: queue.Queue) -> Any:
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return _END

    def compute() -> None:
        while (item := take(inbox)) is not _END:
            item = stages.compute(item)  # drops the input block before a put that may wait
            if not put(outbox, item):
                return
        put(inbox, _END)  # the end marker, passed on to the other compute threads

    io = [threading.Thread(target=reader, name="emunet-read"), threading.Thread(target=writer, name="emunet-write")]
    helpers = [threading.Thread(target=compute, name=f"emunet-compute-{i}") for i in range(1, compute_threads)]
    for t in io + helpers:
        t.start()
    try:
        compute()  # in the task's own thread (the device's owner)
        for t in helpers:
            t.join()
    finally:
        if any(t.is_alive() for t in helpers):  # aborted (e.g. KeyboardInterrupt): stop everyone
            stop.set()
            for t in helpers:
                t.join()
        outbox.put(_END)
        stop.set()
        for t in io:
            t.join()
