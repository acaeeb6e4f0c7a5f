"""What every worker of a local cluster (one emunet starts itself) runs when it starts.

`local_cluster` passes this module as the workers' ``preload``: Dask imports it in each
worker process and calls `dask_setup` before the worker serves tasks.

A local cluster's scheduler lives in the emunet process, so it goes away only when emunet
closes the cluster: at the end of a run, or on Ctrl-C. A worker whose heartbeat lands in
that moment logs "Failed to communicate with scheduler during heartbeat" with a traceback
(distributed's ``Worker.heartbeat``, an ``OSError`` from the closed connection), which
would end an orderly stop with a wall of red. Those records are dropped; every other record,
and any heartbeat failure that is not a lost connection, is kept.
"""

from __future__ import annotations

import logging
from typing import Any

WORKER_LOGGER = "distributed.worker"


class HeartbeatToClosedScheduler(logging.Filter):
    """Drops the worker's heartbeat records caused by a lost connection to the scheduler."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.funcName == "heartbeat" and isinstance(exc, OSError))


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: install the filter in this worker process (once)."""
    logger = logging.getLogger(WORKER_LOGGER)
    if not any(isinstance(f, HeartbeatToClosedScheduler) for f in logger.filters):
        logger.addFilter(HeartbeatToClosedScheduler())
