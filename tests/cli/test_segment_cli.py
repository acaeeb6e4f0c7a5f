"""`emunet segment` on a local Typer app: JSON result, progress, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import save_tiny_checkpoint

SHAPE = (4, 48, 48)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=1)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    from unetcore.synthetic import synthetic_em_volume

    path = tmp_path_factory.mktemp("vol") / "in.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(1, 48, 48), dtype="uint8")[:] = synthetic_em_volume(SHAPE, seed=2).image
    return path


@pytest.fixture(scope="module")
def scheduler(local_scheduler: str) -> str:
    """The session's 2-worker cluster (tests/conftest.py)."""
    return local_scheduler


def args(volume: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["segment", str(volume), str(out), "--model", str(checkpoint), "--block", "2", "24", "24", *extra]


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch) -> None:
    """Workers share 2 cores with other jobs here: oversubscribed threads slow torch down 4×."""
    monkeypatch.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")


def test_json_result_against_a_scheduler(app, runner, volume, checkpoint, scheduler, tmp_path) -> None:
    out = tmp_path / "out.zarr"
    extra = ("--scheduler", scheduler, "--dtype", "float16", "--mask", "--tile", "116,116", "--json")
    result = runner.invoke(app, args(volume, out, checkpoint, *extra))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] and data["computed"] == data["total_blocks"] == 8 and data["cluster"] == "scheduler"
    group = zarr.open_group(str(out), mode="r")
    assert group["probability"].dtype == np.float16 and "mask" in group


def test_local_workers_with_progress(app, runner, volume, checkpoint, tmp_path) -> None:
    out = tmp_path / "out.zarr"
    result = runner.invoke(app, args(volume, out, checkpoint, "--workers", "1"))
    assert result.exit_code == 0, result.output
    assert "8 blocks written" in result.output and "local-cpu" in result.output


def test_failed_blocks_exit_1_and_resume_finishes(app, runner, volume, checkpoint, scheduler, tmp_path) -> None:
    chunk = volume / "c" / "1" / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"garbage!" * 4)
    out = tmp_path / "out.zarr"
    try:
        result = runner.invoke(app, args(volume, out, checkpoint, "--scheduler", scheduler))
    finally:
        chunk.write_bytes(good)
    assert result.exit_code == 1, result.output
    assert "4 failed" in result.output and "--resume" in result.output
    result = runner.invoke(app, args(volume, out, checkpoint, "--scheduler", scheduler, "--resume", "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["computed"], data["skipped"]) == (4, 4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--block", "2", "20", "24"], "phase lattice"),
        (["--workers", "1", "--scheduler", "tcp://127.0.0.1:1"], "got both"),
        (["--dtype", "int16"], "int16"),
    ],
)
def test_usage_errors_exit_2(app, runner, volume, checkpoint, tmp_path, extra, message) -> None:
    result = runner.invoke(app, args(volume, tmp_path / "out.zarr", checkpoint) + extra)
    assert result.exit_code == 2 and message in result.output, result.output


def test_missing_input_and_existing_output_exit_2(app, runner, volume, checkpoint, tmp_path) -> None:
    result = runner.invoke(app, args(tmp_path / "missing.zarr", tmp_path / "o.zarr", checkpoint))
    assert result.exit_code == 2 and "expected a Zarr volume" in result.output
    (tmp_path / "o.zarr").mkdir()
    (tmp_path / "o.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    result = runner.invoke(app, args(volume, tmp_path / "o.zarr", checkpoint))
    # Someone else's Zarr group: no flag is suggested that would touch it.
    assert result.exit_code == 2 and "emunet did not write" in result.output, result.output
    assert "--resume" not in result.output and "--overwrite" not in result.output
    (tmp_path / "o.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"emunet": {"plan": {}}}}')
    result = runner.invoke(app, args(volume, tmp_path / "o.zarr", checkpoint))
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output, result.output


def test_unreachable_scheduler_exit_2(app, runner, volume, checkpoint, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMUNET_SEGMENT_TIMEOUT_S", "1")
    result = runner.invoke(app, args(volume, tmp_path / "out.zarr", checkpoint, "--scheduler", "tcp://127.0.0.1:1"))
    assert result.exit_code == 2 and "dask scheduler" in result.output, result.output
    assert not (tmp_path / "out.zarr").exists(), "nothing is written before the cluster answers"


def test_unset_options_come_from_the_environment(app, runner, volume, checkpoint, scheduler, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMUNET_SEGMENT_BLOCK_SHAPE", "2,24,24")
    monkeypatch.setenv("EMUNET_SEGMENT_DTYPE", "float32")
    out = tmp_path / "out.zarr"
    cmd = ["segment", str(volume), str(out), "--model", str(checkpoint), "--scheduler", scheduler, "--json"]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total_blocks"] == 8
    assert zarr.open_group(str(out), mode="r")["probability"].dtype == np.float32


def test_instances_follow_the_segmentation_on_both_paths(app, runner, volume, scheduler, tmp_path) -> None:
    """`--instances`: `neuron_ids` (uint64) in the output, the same on the flow and the direct path;
    with `--mask` (whose label image takes the NGFF name `labels/`) too."""
    from tests.conftest import ROOT

    demo = ROOT / "models" / "demo-synthetic.safetensors"  # a trained model: real cells and membranes
    labels = {}
    for path in ("--flow", "--no-flow"):
        out = tmp_path / f"out{path}.zarr"
        cmd = ["segment", str(volume), str(out), "--model", str(demo), "--scheduler", scheduler, "--instances", "--json", path,
               *(["--mask"] if path == "--flow" else [])]
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ok"] and data["instances"]["fragments"] > 0 and data["instances"]["num_blocks"] >= 1
        group = zarr.open_group(str(out), mode="r")
        assert group["neuron_ids"].dtype == np.uint64 and group["neuron_ids"].shape == group["probability"].shape
        labels[path] = group["neuron_ids"][...]
        if path == "--flow":
            np.testing.assert_array_equal(group["labels/mask/0"][...], group["mask"][...])
        assert len(np.unique(labels[path])) > 2
    np.testing.assert_array_equal(labels["--flow"], labels["--no-flow"])
