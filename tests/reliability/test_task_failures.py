"""A task that dies marks failed only the blocks it had not written: the result, the ledger
and the exit code agree (before 2 Dec every block of the task was marked failed, including
blocks already written and marked done)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dask
import pytest

from tests.reliability.conftest import wait_for, write_zarr

SHAPE = (12, 288, 288)
BLOCK = (1, 288, 288)  # 12 blocks, 4 per task: 3 tasks; a block takes long enough (~0.1 s) to kill a task mid-way


def _done(out: Path) -> set[int]:
    root = out / "ledger" / "done"
    return {int(p.name) for p in root.rglob("*") if p.is_file() and p.name.isdigit()} if root.exists() else set()


@pytest.mark.slow
def test_a_task_killed_after_some_blocks_fails_only_the_rest(tmp_path, checkpoint) -> None:
    from distributed import Client, LocalCluster

    from pipeline.ledger import Ledger
    from pipeline.segment import SegmentConfig, segment
    from pipeline.submit import SLOT
    from unetcore.synthetic import synthetic_em_volume

    inp = write_zarr(tmp_path / "in.zarr", synthetic_em_volume(SHAPE, seed=3).image, (1, 288, 288))
    out = tmp_path / "out.zarr"
    config = SegmentConfig(block_shape=BLOCK, blocks_per_task=4, max_in_flight=1, progress=False, torch_threads=1,
                           device="cpu", retries=1)  # fmt: skip
    # No second try of a task whose worker died: its blocks come back as a task failure.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources=SLOT,
                               dashboard_address=None)  # fmt: skip
    with cluster, Client(cluster) as client:
        pid = next(iter(client.run(os.getpid).values()))
        killed: list[set[int]] = []

        def kill_mid_task() -> None:
            wait_for(lambda: len(_done(out)) >= 2, 120, "2 blocks of the first task written")
            killed.append(_done(out))
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_mid_task, daemon=True)
        killer.start()
        result = segment(inp, out, checkpoint, config, client=client)
        killer.join(30)
    time.sleep(0.2)
    done = _done(out)
    failed = {f.block_id for f in result.failed}
    assert killed and failed, (killed, result.failed)
    assert killed[0] <= done and not (failed & done)  # written blocks stay done, never failed
    assert result.computed + len(failed) == 12 and result.computed == len(done)
    summary = Ledger(str(out), 12).summary()
    assert set(summary.failed_ids) == failed and summary.done == len(done)
    first_task = set(range(4))
    assert first_task & killed[0] and first_task & failed  # the killed task had both kinds
