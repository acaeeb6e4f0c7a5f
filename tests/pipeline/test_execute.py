"""The execution plane: the three-stage engine, the model plugin, resources, bounded submission.

The engine tests need no Dask. The cluster tests share one real `LocalCluster` (2 worker
processes, each declaring one "GPU" slot) and run plain z-slab blocks of a tiny model over a
Zarr array, so they test the machinery independently of the planner.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.cluster import ClusterConfig, connect, local_cluster
from pipeline.execute import BlockOps, GroupReport, RetryPolicy, run_group, with_retries
from pipeline.submit import submit_bounded, task_restrictions
from pipeline.worker import CheckpointMismatchError, GroupJob, ModelPlugin, ModelSpec, process_group
from tests.conftest import save_tiny_checkpoint


# -- the engine, without Dask ---------------------------------------------------------------
def test_retries_transient_errors_only() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow store")
        return "ok"

    assert with_retries(flaky, RetryPolicy(attempts=3), sleep=lambda s: None) == ("ok", 3)
    calls.clear()
    with pytest.raises(TimeoutError) as info:
        with_retries(flaky, RetryPolicy(attempts=2), sleep=lambda s: None)
    assert info.value.tries == 2
    calls.clear()

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("no such chunk")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, RetryPolicy(attempts=5), sleep=lambda s: None)
    assert len(calls) == 1, "a deterministic error must not be retried"


def test_policy_validates_and_backs_off() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    p = RetryPolicy(backoff_s=0.5, max_backoff_s=1.5)
    assert [p.wait(a) for a in (1, 2, 3)] == [0.5, 1.0, 1.5]


def test_run_group_overlaps_stages_and_reports_failures() -> None:
    """Reads and writes overlap compute; a failing block is reported, the others finish."""
    active: dict[str, int] = {"read": 0, "compute": 0, "write": 0}
    overlap = {"max": 0}
    written: dict[int, int] = {}
    lock = threading.Lock()

    def stage(name: str, seconds: float) -> None:
        with lock:
            active[name] += 1
            overlap["max"] = max(overlap["max"], sum(1 for v in active.values() if v))
        time.sleep(seconds)
        with lock:
            active[name] -= 1

    def read(b: int) -> int:
        if b == 3:
            raise ValueError("corrupt chunk")
        stage("read", 0.02)
        return b

    def compute(b: int, x: int) -> int:
        if b == 5:
            raise RuntimeError("model blew up")
        stage("compute", 0.02)
        return 10 * x

    def write(b: int, y: int) -> None:
        stage("write", 0.02)
        written[b] = y

    ops = BlockOps(read, compute, write, describe=lambda b: {"z": b}, voxels=lambda b: 100)
    report = run_group(range(8), ops, worker="w")
    assert sorted(report.done) == [0, 1, 2, 4, 6, 7]
    assert written == {b: 10 * b for b in report.done}
    assert {(f.block_id, f.stage) for f in report.failed} == {(3, "read"), (5, "compute")}
    failure = next(f for f in report.failed if f.block_id == 3)
    assert failure.where == {"z": 3} and "corrupt chunk" in failure.error and failure.worker == "w"
    assert report.voxels == 600
    assert overlap["max"] >= 2, "stages never ran at the same time"
    assert GroupReport.from_dict(report.to_dict()) == report


def test_run_group_bounds_blocks_held() -> None:
    """With depth 1 the reader is at most a few blocks ahead of the writer."""
    lead = {"max": 0}
    state = {"read": 0, "written": 0}

    def read(b: int) -> int:
        state["read"] += 1
        lead["max"] = max(lead["max"], state["read"] - state["written"])
        return b

    def write(b: int, y: int) -> None:
        time.sleep(0.01)
        state["written"] += 1

    run_group(range(30), BlockOps(read, lambda b, x: x, write), depth=1)
    assert lead["max"] <= 2 * 1 + 3


def test_mark_done_runs_after_write_and_failures_are_not_marked() -> None:
    order: list[tuple[str, int]] = []

    def write(b: int, y: Any) -> None:
        if b == 1:
            raise PermissionError("read-only store")
        order.append(("write", b))

    ops = BlockOps(lambda b: b, lambda b, x: x, write, mark_done=lambda b: order.append(("done", b)))
    report = run_group([0, 1, 2], ops)
    assert order == [("write", 0), ("done", 0), ("write", 2), ("done", 2)]
    assert [(f.block_id, f.stage, f.tries) for f in report.failed] == [(1, "write", 1)]


def test_serial_group_runs_in_the_calling_thread_with_the_same_report() -> None:
    """depth=0: each block read, computed, written and marked before the next one is read,
    all in the calling thread; failures and the report as with the overlapped stages."""
    events: list[tuple[str, int, int]] = []  # (step, block, thread id)

    def read(b: int) -> int:
        events.append(("read", b, threading.get_ident()))
        if b == 3:
            raise ValueError("corrupt chunk")
        return b

    def compute(b: int, x: int) -> int:
        events.append(("compute", b, threading.get_ident()))
        if b == 5:
            raise RuntimeError("model blew up")
        return 10 * x

    def write(b: int, y: int) -> None:
        events.append(("write", b, threading.get_ident()))
        if b == 6:
            raise PermissionError("read-only store")

    def ops() -> BlockOps:
        return BlockOps(read, compute, write, mark_done=lambda b: events.append(("done", b, threading.get_ident())),
                        describe=lambda b: {"z": b}, voxels=lambda b: 100)  # fmt: skip

    serial = run_group(range(8), ops(), depth=0, worker="w")
    assert {t for _, _, t in events} == {threading.get_ident()}
    steps = [(step, b) for step, b, _ in events]
    assert steps[:4] == [("read", 0), ("compute", 0), ("write", 0), ("done", 0)]
    assert steps[steps.index(("read", 3)) + 1] == ("read", 4)  # a failed read goes no further
    events.clear()
    overlapped = run_group(range(8), ops(), depth=1, worker="w")
    for report in (serial, overlapped):
        report.seconds = {}
    assert serial == overlapped
    assert sorted(serial.done) == [0, 1, 2, 4, 7] and serial.voxels == 500
    assert [(f.block_id, f.stage) for f in serial.failed] == [(3, "read"), (5, "compute"), (6, "write")]
    with pytest.raises(ValueError, match="one with depth 0"):
        run_group(range(2), ops(), depth=0, compute_threads=2)


# -- on a real cluster ----------------------------------------------------------------------
SHAPE = (6, 60, 52)  # (z, y, x): six slices, slabs of two


def slab_ops(plugin: ModelPlugin, plan: dict[str, Any]) -> BlockOps:
    """Blocks = z-slabs of a Zarr array, predicted slice by slice by the worker's model."""
    src = plugin.cached(("in", plan["input"]), lambda: zarr.open_array(plan["input"], mode="r"))
    dst = plugin.cached(("out", plan["output"]), lambda: zarr.open_array(plan["output"], mode="r+"))
    z = plan["slab"]

    def read(b: int) -> np.ndarray:
        if b in plan.get("fail", ()):
            raise ValueError(f"unreadable slab {b}")
        return src[b * z : (b + 1) * z]

    def compute(b: int, data: np.ndarray) -> np.ndarray:
        if plan.get("cheap"):
            return data.astype(np.float32)
        return plugin.predictor.predict_stack(data)

    def write(b: int, out: np.ndarray) -> None:
        dst[b * z : (b + 1) * z] = out

    return BlockOps(read, compute, write, describe=lambda b: {"z": [b * z, (b + 1) * z]}, voxels=lambda b: z * 60 * 52)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=0)


@pytest.fixture(scope="module")
def spec(checkpoint: Path) -> ModelSpec:
    from unetcore.checkpoint import file_sha256

    return ModelSpec(str(checkpoint), file_sha256(checkpoint), predict={"batch_size": 2}, torch_threads=1)


@pytest.fixture(scope="module")
def cluster():
    cluster, kind, _ = local_cluster(ClusterConfig(workers=2, torch_threads=1))
    assert kind == "local-cpu"
    with cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster, spec: ModelSpec):
    from distributed import Client

    with Client(cluster) as client:
        client.register_plugin(ModelPlugin(spec))
        yield client


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[str, np.ndarray]:
    from unetcore.synthetic import synthetic_em_volume

    image = synthetic_em_volume(SHAPE, seed=0).image
    path = str(tmp_path_factory.mktemp("vol") / "in.zarr")
    zarr.create_array(path, shape=SHAPE, chunks=(2, 60, 52), dtype="uint8")[:] = image
    return path, image


def _output(tmp_path: Path) -> str:
    path = str(tmp_path / "out.zarr")
    zarr.create_array(path, shape=SHAPE, chunks=(2, 60, 52), dtype="float32", fill_value=-1)
    return path


def _run(client, spec, plan, groups, max_in_flight=4):
    reports, errors = [], []
    stats = submit_bounded(
        client,
        process_group,
        [GroupJob(tuple(g), plan, spec.name, slab_ops) for g in groups],
        max_in_flight=max_in_flight,
        on_result=lambda job, r: reports.append(GroupReport.from_dict(r)),
        on_error=lambda job, e: errors.append(e),
    )
    return reports, errors, stats


def test_cluster_output_equals_single_process_prediction(client, spec, volume, tmp_path) -> None:
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    path, image = volume
    out = _output(tmp_path)
    reports, errors, _ = _run(client, spec, {"input": path, "output": out, "slab": 2}, [[0], [1, 2]])
    assert not errors and sorted(b for r in reports for b in r.done) == [0, 1, 2]
    ckpt = load_checkpoint(spec.checkpoint)
    expected = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(batch_size=2)).predict_stack(image)
    np.testing.assert_allclose(zarr.open_array(out)[:], expected, atol=1e-5)


def test_tasks_carry_the_gpu_restriction(client, spec, volume, tmp_path) -> None:
    path, _ = volume
    plan = {"input": path, "output": _output(tmp_path), "slab": 2, "cheap": True}
    seen: list[dict] = []
    _run(client, spec, plan, [[0], [1], [2]], max_in_flight=3)
    # Hold a future so the scheduler keeps its task state, then look at it there.
    future = client.submit(process_group, GroupJob((0,), plan, spec.name, slab_ops), key="emunet-probe", pure=False, resources={"GPU": 1})
    future.result()
    seen.append(task_restrictions(client))
    assert seen[0] == {"emunet-probe": {"GPU": 1}}
    del future


def test_submission_keeps_in_flight_bounded(client, spec, volume, tmp_path) -> None:
    path, _ = volume
    plan = {"input": path, "output": _output(tmp_path), "slab": 2, "cheap": True}
    live: list[int] = []
    jobs = [GroupJob((i % 3,), plan, spec.name, slab_ops) for i in range(60)]

    def on_result(job, report) -> None:
        if len(live) < 10:  # sample the scheduler a few times mid-run
            live.append(len(task_restrictions(client, prefix="emunet-group")))

    stats = submit_bounded(client, process_group, jobs, max_in_flight=3, on_result=on_result, on_error=lambda j, e: None)
    assert stats.submitted == stats.finished == 60
    assert stats.peak_in_flight <= 3
    # The scheduler's view: `Future.release()` reaches it through the client's event loop, so a
    # finished task may still be listed for a moment after its successor was submitted.
    assert max(live) <= 3 + 1


def _odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(f"task {x} fails")
    return x * 10


def test_finished_tasks_are_collected_and_replaced_together(client) -> None:
    """Whatever finished while the client was busy is fetched in one gather and replaced in one
    graph update; results and errors in one batch still reach their own callbacks, each item
    exactly once, and no more than max_in_flight are ever alive."""
    results: dict[int, int] = {}
    errors: dict[int, str] = {}

    def slow_result(item: int, result: int) -> None:
        time.sleep(0.2)  # meanwhile every other task in flight finishes
        results[item] = result

    stats = submit_bounded(client, _odd_fails, range(24), max_in_flight=6, on_result=slow_result,
                           on_error=lambda item, exc: errors.setdefault(item, str(exc)))  # fmt: skip
    assert results == {x: x * 10 for x in range(0, 24, 2)}
    assert errors == {x: f"task {x} fails" for x in range(1, 24, 2)}
    assert stats.submitted == 24 and stats.finished == 12 and stats.errored == 12 and stats.peak_in_flight <= 6
    assert stats.updates <= 12, stats  # one per task would be 24


def _sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_the_client_sleeps_while_tasks_run(cluster, monkeypatch) -> None:
    """While no task finishes the loop waits (`distributed.wait`, up to WAIT_S), even with a
    client that is not the process's default (emunet's never are): a wait that failed at once
    made the client spin a core beside the workers, 0.6 of the bare model's rate on 2 cores."""
    import pipeline.submit as submit_module
    from distributed import Client

    calls = []
    real_wait = submit_module.wait
    monkeypatch.setattr(submit_module, "wait", lambda *a, **k: calls.append(1) or real_wait(*a, **k))
    with Client(cluster, set_as_default=False) as own:
        stats = submit_bounded(own, _sleeps, [1.5, 1.5], max_in_flight=2, on_result=lambda *a: None,
                               on_error=lambda item, exc: pytest.fail(str(exc)))  # fmt: skip
    assert stats.finished == 2
    assert len(calls) <= 8, f"expected a few waits of up to {submit_module.WAIT_S} s, got {len(calls)}"


def test_model_loaded_once_per_worker(client, spec, volume, tmp_path) -> None:
    path, _ = volume
    plan = {"input": path, "output": _output(tmp_path), "slab": 2}
    _run(client, spec, plan, [[0], [1], [2], [0, 1]])
    client.register_plugin(ModelPlugin(spec))  # registering again keeps the loaded model
    _run(client, spec, plan, [[2]])
    loads = client.run(lambda: __import__("pipeline.worker").worker.LOADS)
    assert sorted(loads.values()) == [1, 1]


def test_failing_block_is_reported_and_others_finish(client, spec, volume, tmp_path) -> None:
    path, _ = volume
    plan = {"input": path, "output": _output(tmp_path), "slab": 2, "fail": [1]}
    reports, errors, _ = _run(client, spec, plan, [[0, 1, 2]])
    assert not errors
    (report,) = reports
    assert report.done == [0, 2]
    (failure,) = report.failed
    assert (failure.block_id, failure.stage, failure.where) == (1, "read", {"z": [2, 4]})
    assert "unreadable slab 1" in failure.error


def test_checkpoint_hash_mismatch_is_a_clear_error(client, spec) -> None:
    bad = ModelSpec(spec.checkpoint, "0" * 64, predict=spec.predict)
    with pytest.raises(CheckpointMismatchError, match="SHA-256"):
        client.register_plugin(ModelPlugin(bad))
    client.unregister_worker_plugin(bad.name)


def test_existing_scheduler_address(cluster, spec, volume, tmp_path) -> None:
    path, _ = volume
    with connect(ClusterConfig(scheduler=cluster.scheduler_address)) as remote:
        assert remote.kind == "scheduler" and remote.slots == 2
        reports, errors, _ = _run(remote.client, spec, {"input": path, "output": _output(tmp_path), "slab": 2}, [[0, 1, 2]])
    assert not errors and reports[0].done == [0, 1, 2]


def test_several_compute_threads_share_the_stage() -> None:
    """Two compute threads overlap (one's CPU work, the other's kernels); nothing is lost."""
    running = {"now": 0, "max": 0}
    lock = threading.Lock()
    written: dict[int, int] = {}

    def compute(b: int, x: int) -> int:
        with lock:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        time.sleep(0.02)
        with lock:
            running["now"] -= 1
        if b == 4:
            raise RuntimeError("bad block")
        return x + 100

    ops = BlockOps(lambda b: b, compute, lambda b, y: written.__setitem__(b, y))
    report = run_group(range(12), ops, compute_threads=2, depth=2)
    assert sorted(report.done) == [b for b in range(12) if b != 4]
    assert written == {b: b + 100 for b in report.done}
    assert [f.block_id for f in report.failed] == [4]
    assert running["max"] == 2


def test_a_task_that_raises_goes_to_on_error(client, spec, volume, tmp_path) -> None:
    """A whole task failing (here: no such plugin on the workers) is reported, not retried."""
    path, _ = volume
    plan = {"input": path, "output": _output(tmp_path), "slab": 2}
    errors: list[tuple[GroupJob, BaseException]] = []
    stats = submit_bounded(
        client, process_group, [GroupJob((0, 1), plan, "emunet-model-missing", slab_ops)], max_in_flight=1,
        on_result=lambda job, r: None, on_error=lambda job, exc: errors.append((job, exc)),
    )  # fmt: skip
    assert stats.errored == 1 and stats.finished == 0
    [(job, exc)] = errors
    assert job.block_ids == (0, 1) and "emunet-model-missing" in str(exc)
