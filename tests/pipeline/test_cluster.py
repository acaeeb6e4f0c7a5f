"""Clusters emunet starts and the clients it holds: worker settings (no sampling profiler,
a preload that keeps a closing scheduler quiet), and the log records dropped or trimmed when
a scheduler goes away or Ctrl-C interrupts a client call. The cluster tests use the
session's local cluster (`local_scheduler`), which `local_cluster` started."""

from __future__ import annotations

import pytest
from distributed import Client

from pipeline.cluster import ClusterConfig, connect, connect_client, local_cluster


def _profiling(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_local_workers_run_without_the_statistical_profiler_unless_asked(local_scheduler) -> None:
    """The clusters emunet starts leave Dask's stack sampler off (about 11 % of a CPU worker's
    time); the setting reaches the worker processes and does not stay in this one."""
    import dask

    from pipeline.cluster import WORKER_PROFILE

    with Client(local_scheduler) as client:
        assert set(client.run(_profiling).values()) == {False}
    assert dask.config.get(WORKER_PROFILE) is True  # this process's configuration is untouched
    cluster, _, _ = local_cluster(ClusterConfig(workers=1, torch_threads=1, worker_profile=True))
    with cluster, Client(cluster) as profiled:
        assert set(profiled.run(_profiling).values()) == {True}


def _quiet_heartbeat(dask_worker) -> bool:
    import logging

    from pipeline.local_worker import WORKER_LOGGER, HeartbeatToClosedScheduler

    return sum(isinstance(f, HeartbeatToClosedScheduler) for f in logging.getLogger(WORKER_LOGGER).filters) == 1


def test_local_workers_drop_heartbeat_tracebacks_of_a_closing_scheduler(local_scheduler) -> None:
    """Each local worker filters its logger from the start (its preload): a heartbeat that finds
    the scheduler gone (an OSError, as when emunet closes its cluster) leaves no record; other
    heartbeat errors and every other record of the worker are kept."""
    import logging
    import sys

    from distributed.comm.core import CommClosedError

    from pipeline.local_worker import HeartbeatToClosedScheduler

    with Client(local_scheduler) as client:
        assert set(client.run(_quiet_heartbeat).values()) == {True}

    def record(exc: BaseException, func: str) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            made = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, "Failed", (), sys.exc_info())
            made.funcName = func
            return made

    quiet = HeartbeatToClosedScheduler()
    assert not quiet.filter(record(CommClosedError("in <TCP ...>: Stream is closed"), "heartbeat"))
    assert not quiet.filter(record(ConnectionRefusedError(), "heartbeat"))
    assert quiet.filter(record(KeyError("status"), "heartbeat"))  # not a lost connection: kept
    assert quiet.filter(record(CommClosedError(), "execute"))  # another method's record: kept


def test_cluster_config_rejects_both_targets() -> None:
    with pytest.raises(ValueError, match="either workers"):
        ClusterConfig(workers=2, scheduler="tcp://127.0.0.1:1")


def test_connection_loss_tracebacks_are_kept_quiet() -> None:
    """What distributed logs when the scheduler goes away: a failed batched send keeps its line
    without the traceback, a cancelled reconnect is dropped, anything else is untouched."""
    import asyncio
    import logging
    import sys

    from distributed.comm.core import CommClosedError

    from pipeline.cluster import _QuietConnectionLoss

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("distributed.batched", logging.INFO, __file__, 1, "Batched Comm Closed", (), sys.exc_info())

    quiet = _QuietConnectionLoss()
    closed = record(CommClosedError())
    assert quiet.filter(closed) and closed.exc_info is None and "Traceback" not in logging.Formatter().format(closed)
    assert not quiet.filter(record(asyncio.CancelledError()))
    other = record(ValueError("a bug"))
    assert quiet.filter(other) and other.exc_info is not None


def test_a_ctrl_c_inside_a_client_call_leaves_no_traceback() -> None:
    """distributed's ``sync`` schedules a ``cancel`` callback on Ctrl-C; when the interrupt
    lands before its coroutine started, that callback fails with a NameError that tornado logs
    with a traceback. Exactly that record is dropped; other NameErrors are kept."""
    import logging
    import sys
    import types

    import distributed.utils

    from pipeline.cluster import _InterruptedSyncCall

    nested = [c for c in distributed.utils.sync.__code__.co_consts if isinstance(c, types.CodeType)]
    assert "cancel" in {c.co_name for c in nested}  # the callback the filter recognises still exists

    def record(filename: str) -> logging.LogRecord:
        scope: dict = {}
        exec(compile("def cancel():\n    return future\n", filename, "exec"), scope)  # noqa: S102
        try:
            scope["cancel"]()
        except NameError:
            return logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, "Exception in callback", (),
                                     sys.exc_info())  # fmt: skip
        raise AssertionError("expected a NameError")

    quiet = _InterruptedSyncCall()
    assert not quiet.filter(record(distributed.utils.__file__))
    assert quiet.filter(record("/somewhere/else.py"))
    plain = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, "no exception", (), None)
    assert quiet.filter(plain)


def test_a_failed_handshake_leaves_this_process_s_dask_default_alone() -> None:
    """An HTTP server where a scheduler was expected: the refused client must not stay the
    process's default, or the next ``.compute()`` here (xarray in the same notebook) hangs."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import dask
    import dask.array as da
    from distributed.client import _get_global_client

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConnectionError, match="HTTP server"):
            connect_client(f"tcp://127.0.0.1:{server.server_port}", 1.0)
    finally:
        server.shutdown()
    assert _get_global_client() is None and dask.config.get("scheduler", None) is None
    assert int(da.ones(4, chunks=2).sum().compute()) == 4  # the local scheduler, as before


def test_emunet_s_clients_are_explicit_not_the_process_default(local_scheduler) -> None:
    """A user's own default client (or none) is what their dask code keeps using while
    emunet holds a client of its own."""
    from distributed.client import _get_global_client

    with connect(ClusterConfig(scheduler=local_scheduler)) as cluster:
        assert cluster.client.status == "running" and _get_global_client() is None
