"""Faults with real processes: a block that always fails, a worker killed mid-run, the client
(CLI) process killed mid-run, and a second run into the same output. Every run's output is
compared bitwise with a clean run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import zarr

from pipeline.ownership import Existing
from tests.reliability.conftest import chunk_files, wait_for, write_zarr

SHAPE = (24, 48, 48)
BLOCK = (1, 24, 24)  # 96 blocks
NUM_BLOCKS = 24 * 2 * 2
ROOT = Path(__file__).resolve().parents[2]


def config(**kw):
    from pipeline.segment import SegmentConfig

    base = dict(block_shape=BLOCK, progress=False, torch_threads=1, blocks_per_task=1, max_in_flight=2, device="cpu")
    return SegmentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def client(local_scheduler):
    from distributed import Client

    with Client(local_scheduler) as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from unetcore.synthetic import synthetic_em_volume

    return write_zarr(tmp_path_factory.mktemp("src") / "in.zarr", synthetic_em_volume(SHAPE, seed=5).image, (1, 24, 24))


@pytest.fixture(scope="module")
def clean(source, checkpoint, client, tmp_path_factory) -> np.ndarray:
    """The probability of an undisturbed run."""
    from pipeline.segment import segment

    out = tmp_path_factory.mktemp("clean") / "out.zarr"
    result = segment(source, out, checkpoint, config(), client=client)
    assert result.ok and result.computed == NUM_BLOCKS
    return zarr.open_array(str(out / "probability"))[...]


@pytest.fixture()
def volume_copy(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "in.zarr"))


def probability(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "probability"))[...]


def done_count(out: Path) -> int:
    root = out / "ledger" / "done"
    return sum(1 for p in root.rglob("*") if p.is_file() and p.name.isdigit()) if root.exists() else 0


def test_a_block_that_always_fails_is_reported_and_resumed(cli, runner, volume_copy, checkpoint, clean, client, tmp_path) -> None:
    """A corrupt input chunk: its blocks fail (every try), are listed by `emunet status` with
    coordinates and cause, the other blocks finish; restoring the chunk and resuming computes
    exactly the failed blocks, and the output equals a clean run's bitwise."""
    from pipeline.segment import segment

    chunk = volume_copy / "c" / "10" / "0" / "0"  # z = 10, (y, x) chunk (0, 0)
    assert chunk in chunk_files(volume_copy)
    good = chunk.read_bytes()
    chunk.write_bytes(b"\x00not zstd" * 9)
    out = tmp_path / "out.zarr"
    first = segment(volume_copy, out, checkpoint, config(), client=client)
    failed = sorted(f.block_id for f in first.failed)
    assert 40 in failed and set(failed) <= {40, 41, 42, 43}  # slice 10 blocks whose context reads it
    assert first.computed == NUM_BLOCKS - len(failed)

    status = runner.invoke(cli, ["status", str(out), "--json"])
    report = json.loads(status.stdout)
    assert report["done"] == NUM_BLOCKS - len(failed) and not report["complete"]
    listed = {f["block_id"]: f for f in report["failed"]}
    assert sorted(listed) == failed
    assert (listed[40]["write_offset"], listed[40]["write_shape"]) == ([10, 0, 0], [1, 24, 24])
    assert "decompression" in listed[40]["error"].lower()

    chunk.write_bytes(good)
    second = segment(volume_copy, out, checkpoint, config(resume=True), client=client)
    assert second.ok and second.skipped == NUM_BLOCKS - len(failed) and second.computed == len(failed)
    assert np.array_equal(probability(out), clean)
    report = json.loads(runner.invoke(cli, ["status", str(out), "--json"]).stdout)
    assert report["complete"] and report["failed"] == []


def test_killing_a_worker_mid_run(volume_copy, checkpoint, clean, tmp_path) -> None:
    """SIGKILL one of two worker processes once some blocks are done: the nanny restarts it,
    the scheduler reruns its task, the run completes with every block reported done exactly
    once and the output bitwise equal to a clean run's."""
    from distributed import Client, LocalCluster

    from pipeline.ledger import Ledger
    from pipeline.segment import segment

    out = tmp_path / "out.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster, Client(cluster) as c:  # fmt: skip
        pids = c.run(os.getpid)
        box: dict = {}
        run = threading.Thread(target=lambda: box.update(r=segment(volume_copy, out, checkpoint, config(), client=c)))
        run.start()
        wait_for(lambda: done_count(out) >= 4, 120, "4 blocks done")
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        at_kill = done_count(out)
        run.join(120)
        assert not run.is_alive()
        assert at_kill < NUM_BLOCKS  # the kill really happened mid-run
        assert victim not in c.run(os.getpid).values()
    result = box["r"]
    assert result.ok, result.failed
    assert result.computed == NUM_BLOCKS  # each block's report counted once
    assert Ledger(str(out), NUM_BLOCKS).summary().done == NUM_BLOCKS
    assert np.array_equal(probability(out), clean)


CLI = "from emunet.cli.app import app; app()"


def test_killing_the_client_process_then_resuming(local_scheduler, volume_copy, checkpoint, clean, client, tmp_path) -> None:
    """SIGKILL `emunet segment` (the client) after some blocks are done; a resume (in this
    process, `segment(resume=True)`: what `--resume` runs) then skips every block marked done
    (none recomputed: ≤ 5 % required) and the output is bitwise equal."""
    from pipeline.segment import segment

    out = tmp_path / "out.zarr"
    base = [sys.executable, "-c", CLI, "segment", str(volume_copy), str(out), "--model", str(checkpoint),
            "--scheduler", local_scheduler, "--block", *map(str, BLOCK), "--blocks-per-task", "1",
            "--max-in-flight", "2", "--no-flow", "--json"]  # fmt: skip
    env = {**os.environ, "EMUNET_SEGMENT_TORCH_THREADS": "1"}
    proc = subprocess.Popen(base, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: done_count(out) >= 4 or proc.poll() is not None, 120, "4 blocks done")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # tasks already running on the workers may still finish; wait until the ledger is still
    time.sleep(0.5)
    wait_for(lambda: done_count(out) == (n := done_count(out)) and (time.sleep(0.5) or done_count(out) == n), 30, "quiet")
    before = done_count(out)
    assert 4 <= before < NUM_BLOCKS
    result = segment(volume_copy, out, checkpoint, config(resume=True), client=client)
    assert result.ok, result.failed
    # tasks of the killed client that were already running may have finished since `before`
    assert result.skipped >= before and result.computed + result.skipped == NUM_BLOCKS
    recomputed = result.computed - (NUM_BLOCKS - result.skipped)  # done blocks run again
    assert recomputed <= 0.05 * result.skipped
    assert np.array_equal(probability(out), clean)


@pytest.mark.parametrize("path", ["--no-flow", "--flow"])
def test_ctrl_c_stops_the_run_cleanly_and_it_resumes(path, local_scheduler, volume_copy, checkpoint, clean, client,
                                                      prefect_home, tmp_path) -> None:  # fmt: skip
    """Ctrl-C (SIGINT to the terminal's whole process group) mid-run: the command stops within
    seconds with exit 130 and one line naming the done blocks and --resume; no traceback (local
    workers and the temporary Prefect server ignore the terminal's SIGINT: the command stops
    them); the ledger is consistent, so a resume (in this process on the shared scheduler, as
    `--resume` runs it: how the run was stopped is the point, not how it resumes) completes and
    equals a clean run."""
    from pipeline.segment import segment

    out = tmp_path / "out.zarr"
    where = ["--workers", "2"] if path == "--no-flow" else ["--scheduler", local_scheduler]
    args = [sys.executable, "-c", CLI, "segment", str(volume_copy), str(out), "--model", str(checkpoint), *where,
            "--block", *map(str, BLOCK), "--blocks-per-task", "1", "--max-in-flight", "2", path]  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "EMUNET_SEGMENT_TORCH_THREADS": "1",
           "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: done_count(out) >= 3 or proc.poll() is not None, 240, "3 blocks done")
        assert proc.poll() is None, "finished before the interrupt"
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        proc.wait(60)
        stopped = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log.seek(0)
    text = log.read()
    assert proc.returncode == 130, text[-3000:]
    assert stopped < 30, stopped  # generous on a loaded machine; ~5 s here
    assert "Traceback" not in text, text[-3000:]
    assert text.count("interrupted") == 1 and "rerun the same command with --resume" in text, text[-2000:]
    if path == "--flow":
        return  # the ledger after a stop is the same on both paths: the resume is checked once
    rerun = segment(volume_copy, out, checkpoint, config(resume=True), client=client)
    assert rerun.ok and rerun.skipped >= 3 and rerun.computed + rerun.skipped == NUM_BLOCKS, rerun
    assert np.array_equal(probability(out), clean)


def test_killing_the_flow_process_then_resuming(local_scheduler, volume_copy, checkpoint, clean, prefect_api_url,
                                                tmp_path) -> None:  # fmt: skip
    """The flow path: `emunet segment` runs the Prefect flow in its own process, reporting to a
    Prefect server (the session's, as a deployment's would be). SIGKILL the whole process group
    mid-run, as a node failure would (the server keeps the dead run); the same command with
    `--resume` skips the done blocks and the output is bitwise equal. (A temporary server of
    the command under a signal: the Ctrl-C test.)"""
    out = tmp_path / "out.zarr"
    base = [sys.executable, "-c", CLI, "segment", str(volume_copy), str(out), "--model", str(checkpoint),
            "--scheduler", local_scheduler, "--block", *map(str, BLOCK), "--blocks-per-task", "1",
            "--max-in-flight", "2", "--json"]  # fmt: skip
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "EMUNET_SEGMENT_TORCH_THREADS": "1",
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_api_url}  # fmt: skip
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(base, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: done_count(out) >= 4 or proc.poll() is not None, 240, "4 blocks done")
        os.killpg(proc.pid, signal.SIGKILL)  # the flow's process and anything it started
    finally:
        proc.wait(30)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    time.sleep(0.5)
    wait_for(lambda: done_count(out) == (n := done_count(out)) and (time.sleep(0.5) or done_count(out) == n), 30, "quiet")
    before = done_count(out)
    assert 4 <= before < NUM_BLOCKS
    rerun = subprocess.run([*base, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                           start_new_session=True)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert result["skipped"] >= before and result["computed"] + result["skipped"] == NUM_BLOCKS
    recomputed = result["computed"] - (NUM_BLOCKS - result["skipped"])
    print(f"done at the kill {before}, skipped {result['skipped']}, computed {result['computed']}, recomputed {recomputed}")
    assert recomputed <= 0.05 * result["skipped"]
    assert np.array_equal(probability(out), clean)


def test_a_second_run_into_a_running_output_is_refused(cli, runner, volume_copy, checkpoint, clean, client, tmp_path) -> None:
    """While one run writes OUT, a second (no --resume/--overwrite, or --overwrite) is refused
    with a clear message and leaves the first run's output intact."""
    from pipeline.segment import segment

    out = tmp_path / "out.zarr"
    box: dict = {}
    run = threading.Thread(target=lambda: box.update(r=segment(volume_copy, out, checkpoint, config(), client=client)))
    run.start()
    try:
        wait_for(lambda: done_count(out) >= 1, 120, "a block done")
        base = ["segment", str(volume_copy), str(out), "--model", str(checkpoint), "--block", *map(str, BLOCK),
                "--workers", "1", "--no-flow"]  # fmt: skip
        replace = runner.invoke(cli, [*base, "--overwrite"])  # would mix two runs' blocks in one output
        second = runner.invoke(cli, base)
    finally:
        run.join(120)
    assert second.exit_code == 2
    assert "expected no output" in second.output.lower() and "--resume" in second.output
    assert replace.exit_code == 2 and "expected no other run writing" in " ".join(replace.output.split()), replace.output
    assert box["r"].ok and np.array_equal(probability(out), clean)


def test_two_simultaneous_creates_cannot_both_win(source, checkpoint, tmp_path, monkeypatch) -> None:
    """The race made deterministic: the second creator's existence check ran before the first
    created the store (the existence check answers "nothing there")."""
    import pipeline.output as output
    from pipeline.ledger import Ledger
    from pipeline.plan import plan_for_volume
    from pipeline.volume import open_volume
    from unetcore.checkpoint import read_header
    from unetcore.config import UNetConfig

    config = UNetConfig.from_dict(read_header(checkpoint)["model_config"])
    plan = plan_for_volume(open_volume(str(source)), str(tmp_path / "out.zarr"), config, block_shape=BLOCK)
    output.create_output(plan, output.OutputOptions(), model_config=config.to_dict())
    Ledger(plan.output_url, plan.num_blocks).mark_done(0)
    monkeypatch.setattr(output, "check_output", lambda *a, **k: Existing("none"))  # checked before the first created it
    with pytest.raises(output.OutputExistsError, match="another run created"):
        output.create_output(plan, output.OutputOptions(), model_config=config.to_dict())
    assert Ledger(plan.output_url, plan.num_blocks).is_done(0)  # the first run's work survives
