"""Faults of a shared, long-lived cluster, with real processes as deployed: a `dask scheduler`
and `dask worker --resources GPU=1 --nthreads 1` processes on 127.0.0.1, and `emunet segment
--scheduler ADDRESS --no-flow` subprocesses as independent clients.

* several runs at once on one cluster, into different outputs, with different checkpoints:
  every output bitwise equal to a solo run's, and no model left behind without bound;
* the scheduler SIGKILLed mid-run: the client stops in bounded time with a message naming
  the lost scheduler and the fix, and ``--resume`` on a restarted cluster finishes the output
  bitwise equal to a clean run's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import save_tiny_checkpoint
from tests.reliability.conftest import wait_for, write_zarr

ROOT = Path(__file__).resolve().parents[2]
CLI = "from emunet.cli.app import app; app()"
BLOCK = (1, 24, 24)


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "EMUNET_SEGMENT_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class DaskProcesses:
    """`dask scheduler` / `dask worker` processes, each in its own session (so its children
    go with it); `close` SIGKILLs whatever is still running."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.scheduler_proc: subprocess.Popen | None = None
        self.worker_procs: list[subprocess.Popen] = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def scheduler(self, port: int) -> str:
        """Start a scheduler on 127.0.0.1:`port`; its address once it accepts connections."""
        self.scheduler_proc = self._start("scheduler", [
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
            "--no-dashboard", "--idle-timeout", "300",
        ])  # fmt: skip
        end = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.scheduler_proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError(f"the scheduler on port {port} did not start") from None
                time.sleep(0.1)
        return f"tcp://127.0.0.1:{port}"

    def workers(self, address: str, n: int) -> None:
        """`n` single-slot workers (each a nanny and its worker process); waits until all joined."""
        from distributed import Client

        for _ in range(n):
            self.worker_procs.append(self._start("worker", [
                "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
                "--resources", "GPU=1", "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60",
            ]))  # fmt: skip
        with Client(address, timeout=30) as client:
            client.wait_for_workers(n, timeout=60)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the process and its session (a nanny's worker too, even if the nanny is gone)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nothing left of it
            pass
        proc.wait(30)

    def kill_workers(self) -> None:
        for proc in self.worker_procs:
            self.kill(proc)
        self.worker_procs = []

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.kill(proc)


@pytest.fixture()
def dask_processes(tmp_path) -> Iterator[DaskProcesses]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = DaskProcesses(logs)
    try:
        yield procs
    finally:
        procs.close()


def segment_cmd(volume: Path, out: Path, checkpoint: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "segment", str(volume), str(out), "--model", str(checkpoint),
            "--scheduler", address, "--block", *map(str, BLOCK), "--no-flow", "--json", *extra]  # fmt: skip


# --------------------------------------------------------------------------- data and checks
def volume(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    from unetcore.synthetic import synthetic_em_volume

    return write_zarr(path, synthetic_em_volume(shape, seed=seed).image, (1, 24, 24))


def blocks_of(shape: tuple[int, int, int]) -> int:
    return int(np.prod([-(-s // b) for s, b in zip(shape, BLOCK)]))


def probability(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "probability"))[...]


def done_markers(out: Path) -> dict[int, int]:
    """Block id → mtime (ns) of its done marker."""
    root = out / "ledger" / "done"
    if not root.exists():
        return {}
    return {int(p.name): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name.isdigit()}


def solo(volume_path: Path, out: Path, checkpoint: Path, address: str, **kw) -> np.ndarray:
    """The probability of an undisturbed run of (input, checkpoint), alone on the cluster."""
    from pipeline.segment import SegmentConfig, segment

    config = SegmentConfig(block_shape=BLOCK, scheduler=address, progress=False, torch_threads=1, **kw)
    result = segment(volume_path, out, checkpoint, config)
    assert result.ok and result.computed == result.total_blocks
    return probability(out)


# --------------------------------------------------------------------------- the scheduler dying
KILL_SHAPE = (24, 48, 48)  # 96 blocks
KILL_BLOCKS = blocks_of(KILL_SHAPE)


def test_the_scheduler_dying_mid_run(dask_processes, checkpoint, tmp_path) -> None:
    """SIGKILL the scheduler while `emunet segment` runs: the client exits (2) within 60 s
    with one line naming the lost scheduler and ``--resume``, no traceback; every block
    marked done holds the clean run's values, none is marked failed; on a scheduler
    restarted at the same address and new workers, ``--resume`` computes only the blocks not
    done and the output equals a clean run's bitwise."""
    from pipeline.ledger import Ledger
    from pipeline.output import load_plan

    source = volume(tmp_path / "in.zarr", KILL_SHAPE, seed=5)
    port = free_port()
    address = dask_processes.scheduler(port)
    dask_processes.workers(address, 2)
    clean = solo(source, tmp_path / "clean.zarr", checkpoint, address, blocks_per_task=1, max_in_flight=2)

    out = tmp_path / "out.zarr"
    cmd = segment_cmd(source, out, checkpoint, address, "--blocks-per-task", "1", "--max-in-flight", "2")
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: len(done_markers(out)) >= 4 or proc.poll() is not None, 120, "4 blocks done")
        assert proc.poll() is None, "the run ended before the scheduler was killed"
        dask_processes.kill(dask_processes.scheduler_proc)
        killed = time.monotonic()
        at_kill = len(done_markers(out))
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail("the client still runs 60 s after its scheduler died")
        detected = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    message = stderr.read_text()
    print(f"client exit {proc.returncode} {detected:.1f} s after the kill; {at_kill} blocks done at the kill")
    print(message[-3000:])
    assert at_kill < KILL_BLOCKS, "the run ended before the kill"
    # Not a usage error: exit 3 ("scheduler lost"), no traceback.
    assert proc.returncode == 3
    assert "error (scheduler lost)" in " ".join(message.split())
    assert "Traceback" not in message
    assert "lost" in message and f"scheduler at {address}" in message and "--resume" in message

    # Workers may finish the task they were running; then nothing moves any more.
    dask_processes.kill_workers()
    done = done_markers(out)
    assert 4 <= len(done) < KILL_BLOCKS
    written = probability(out)
    plan = load_plan(str(out))
    for b in done:  # a block marked done holds what a clean run writes there
        roi = plan.block(b).write_roi
        index = tuple(slice(o, o + s) for o, s in zip(roi.offset, roi.shape))
        assert np.array_equal(written[index], clean[index]), f"block {b} marked done but not written"
    assert Ledger(str(out), KILL_BLOCKS).failures() == {}, "blocks interrupted by the lost scheduler are not failures"

    # The cluster comes back on the same address; the rerun resumes.
    assert dask_processes.scheduler(port) == address
    dask_processes.workers(address, 2)
    rerun = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout)
    recomputed = result["computed"] - (KILL_BLOCKS - len(done))
    print(f"resume: skipped {result['skipped']}, computed {result['computed']}, done blocks recomputed {recomputed}")
    assert result["skipped"] == len(done) and recomputed == 0
    assert np.array_equal(probability(out), clean)
    assert Ledger(str(out), KILL_BLOCKS).summary().complete


# --------------------------------------------------------------------------- runs at once
# (shape, seed, checkpoint): a and c share a model (one plugin, two holders); b has other
# weights. The runs' tasks queue behind a gate until all three have submitted, so they
# interleave on the workers, and a (small) ends while c (large) still uses the shared model.
CONCURRENT = {
    "a": ((4, 48, 48), 11, "one"),  # 16 blocks
    "b": ((6, 48, 48), 12, "two"),  # 24 blocks
    "c": ((16, 48, 48), 13, "one"),  # 64 blocks
}


@pytest.fixture(scope="module")
def checkpoint_two(tmp_path_factory) -> Path:
    """The tiny model of the `checkpoint` fixture with other weights (seed 2)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model2") / "tiny-2.safetensors", seed=2)


def emunet_plugins(dask_scheduler) -> list[str]:
    return sorted(n for n in dask_scheduler.worker_plugins if n.startswith("emunet-model-"))


def task_states(dask_scheduler) -> dict[str, str]:
    return {str(k): ts.state for k, ts in dask_scheduler.tasks.items()}


def worker_models(dask_worker) -> dict[str, object]:
    """The emunet plugins of a worker, and how many U-Nets its process still holds."""
    import gc

    from unetcore.model import UNet

    gc.collect()
    return {
        "plugins": sorted(n for n in dask_worker.plugins if n.startswith("emunet-model-")),
        "unets": sum(isinstance(o, UNet) for o in gc.get_objects()),
    }


def test_concurrent_runs_with_different_models_on_one_cluster(dask_processes, checkpoint, checkpoint_two, tmp_path) -> None:
    """Three `emunet segment --scheduler` clients at once into three outputs, two checkpoints:
    every run exits 0, every output equals a solo run's bitwise, every ledger is complete
    with each block reported once; the model two runs share is not pulled from under the
    one still using it; afterwards at most `KEEP_IDLE_MODELS` idle model stays on the
    cluster (scheduler and workers), and the hold of a client that went away without
    releasing is dropped."""
    from distributed import Client

    from pipeline.ledger import Ledger
    from pipeline.worker import KEEP_IDLE_MODELS, ModelSpec, held_models, hold_model
    from unetcore.checkpoint import file_sha256

    models = {"one": checkpoint, "two": checkpoint_two}
    inputs = {k: volume(tmp_path / f"in-{k}.zarr", shape, seed) for k, (shape, seed, _) in CONCURRENT.items()}
    address = dask_processes.scheduler(free_port())
    dask_processes.workers(address, 2)
    gate = tmp_path / "gate-open"

    def closed_gate(path: str) -> None:  # holds a GPU slot until the file exists
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.05)

    with Client(address, timeout=30) as client:
        # A client that holds a model and goes away without releasing it (as a killed run does).
        with Client(address, timeout=30) as ghost:
            stale = ModelSpec(str(checkpoint_two), file_sha256(checkpoint_two), predict={"batch_size": 1}, torch_threads=1)
            hold_model(ghost, stale, "ghost-run")
        assert stale.name in client.run_on_scheduler(emunet_plugins)

        gates = [client.submit(closed_gate, str(gate), key=f"gate-{i}", pure=False, resources={"GPU": 1}) for i in range(2)]
        wait_for(lambda: [client.run_on_scheduler(task_states).get(f"gate-{i}") for i in range(2)] == ["processing"] * 2,
                 30, "both slots gated")  # fmt: skip
        procs, t0 = {}, time.monotonic()
        try:
            for k, (_, _, model) in CONCURRENT.items():
                cmd = segment_cmd(inputs[k], tmp_path / f"out-{k}.zarr", models[model], address,
                                  "--blocks-per-task", "2", "--max-in-flight", "2")  # fmt: skip
                procs[k] = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def runs_waiting() -> int:
                keys = client.run_on_scheduler(task_states)
                return len({k.split("-")[2] for k in keys if k.startswith("emunet-segment-")})

            wait_for(lambda: runs_waiting() == 3 or any(p.poll() is not None for p in procs.values()), 120, "3 runs submitted")
            holds = held_models(client)  # every run holds its model, none has written a block
            gate.touch()
            outputs = {k: p.communicate(timeout=180) for k, p in procs.items()}
        finally:
            gate.touch()
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(30)
        wall = time.monotonic() - t0
        client.gather(gates)
        del gates
        for k, p in procs.items():
            assert p.returncode == 0, (k, outputs[k][1][-3000:])
        results = {k: json.loads(out) for k, (out, _) in outputs.items()}
        plugin = {k: r["plugin"] for k, r in results.items()}
        assert plugin["a"] == plugin["c"] != plugin["b"]
        assert sorted(map(len, (holds[plugin["a"]], holds[plugin["b"]]))) == [1, 2], holds
        assert not holds.get(stale.name), "the gone client's hold was dropped"

        # The runs interleaved on the workers, and a ended while c still used their model.
        spans = {k: (min(m.values()), max(m.values())) for k in CONCURRENT if (m := done_markers(tmp_path / f"out-{k}.zarr"))}
        for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
            assert spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1], f"runs {x} and {y} did not overlap"
        assert spans["a"][1] < spans["c"][1]

        for k, (shape, _, _) in CONCURRENT.items():
            n = blocks_of(shape)
            r = results[k]
            assert r["ok"] and (r["computed"], r["skipped"], r["total_blocks"]) == (n, 0, n), k
            summary = Ledger(str(tmp_path / f"out-{k}.zarr"), n).summary()
            assert summary.complete and summary.failed == (), k

        # No model left behind beyond the idle bound; the gone client's one went with them.
        after = client.run_on_scheduler(emunet_plugins)
        on_workers = client.run(worker_models)
        print(f"3 concurrent runs: {wall:.1f} s wall; holds at the gate {holds}; plugins left {after}; workers {on_workers}")
        assert len(after) <= KEEP_IDLE_MODELS and stale.name not in after
        assert held_models(client) == {n: [] for n in after}
        for w in on_workers.values():
            assert w["plugins"] == after and w["unets"] <= KEEP_IDLE_MODELS

    # Each output equals a run of the same (input, checkpoint) alone on the cluster.
    for k, (_, _, model) in CONCURRENT.items():
        alone = solo(inputs[k], tmp_path / f"solo-{k}.zarr", models[model], address, blocks_per_task=2, max_in_flight=2)
        assert np.array_equal(probability(tmp_path / f"out-{k}.zarr"), alone), f"run {k} differs from its solo run"
    with Client(address, timeout=30) as client:
        assert len(client.run_on_scheduler(emunet_plugins)) <= KEEP_IDLE_MODELS
