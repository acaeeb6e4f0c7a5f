"""The commands that run flows: `emunet weights` on Zarr, `emunet train`, `emunet demo`, and
the flow path of `emunet segment` (`emunet.cli.flow_commands.segment_with_flow`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from emunet.cli.app import app
from tests.flows.conftest import BLOCK, DEMO_MODEL

pytestmark = pytest.mark.usefixtures("prefect_api")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("flow", ["--flow", "--no-flow"])
def test_weights_on_zarr_labels_runs_blockwise(volume, tmp_path, flow) -> None:
    from unetcore.weightmap import WeightMapConfig, weight_map_stack

    out = tmp_path / "w.zarr"
    result = invoke("weights", volume[1], out, "--instances", flow)
    assert result.exit_code == 0, result.output
    expected = weight_map_stack(volume[3], WeightMapConfig(), instances=True)
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["weights"][:], expected, rtol=1e-6)
    again = invoke("weights", volume[1], out, "--instances", flow)
    assert again.exit_code == 2 and "overwrite" in again.output


def test_train_reads_zarr_and_precomputed_weights(volume, tmp_path) -> None:
    assert invoke("weights", volume[1], tmp_path / "w.zarr", "--instances").exit_code == 0
    result = invoke(
        "train", "--images", volume[0], "--labels", volume[1], "--weights", tmp_path / "w.zarr", "--instances",
        "--preset", "tiny", "--base-channels", "4", "--steps", "2", "--tile", "100", "--val-slices", "3",
        "--out", tmp_path / "run", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 2 and 0 <= summary["metrics"]["pixel_error"] <= 1  # from the flow's evaluation
    assert Path(summary["best_checkpoint"]).is_file()


def test_train_without_flow_and_usage_errors(volume, tmp_path) -> None:
    common = ["--images", volume[0], "--labels", volume[1], "--instances", "--preset", "tiny", "--base-channels", "4",
              "--steps", "1", "--tile", "100", "--out", tmp_path / "run", "--no-progress", "--device", "cpu"]  # fmt: skip
    result = invoke("train", *common, "--no-flow")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 1 and "metrics" not in summary
    bad = invoke("train", *common, "--no-flow", "--scheduler", "tcp://127.0.0.1:9")
    assert bad.exit_code == 2 and "--flow" in bad.output
    fresh = [tmp_path / "run2" if a == tmp_path / "run" else a for a in common]  # "run" holds the first run
    overlap = invoke("train", *fresh, "--train-slices", "0:3", "--val-slices", "2")
    assert overlap.exit_code == 2 and "disjoint" in overlap.output


def test_segment_flow_path_exit_codes(volume, scheduler, tmp_path) -> None:
    from emunet.cli.flow_commands import segment_with_flow
    from pipeline.segment import SegmentConfig

    config = SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False)
    assert segment_with_flow(volume[0], tmp_path / "a.zarr", DEMO_MODEL, config, ground_truth=volume[1]) == 0
    chunk = Path(volume[0]) / "c" / "1" / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"broken" * 8)
    try:
        assert segment_with_flow(volume[0], tmp_path / "b.zarr", DEMO_MODEL, config) == 1
    finally:
        chunk.write_bytes(good)


def test_demo_runs_the_flow_on_the_embedded_input(tmp_path) -> None:
    """`make demo` without arguments: the synthetic volume, the committed model, 1 worker here."""
    result = invoke("demo", "--out", tmp_path / "demo", "--workers", "1")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["blocks"].startswith("4 of 4")
    assert report["pixel_error"] == pytest.approx(0.0172, abs=2e-3)  # docs/models/demo-synthetic.md
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 1000
    assert zarr.open_group(str(tmp_path / "demo" / "input.zarr"), mode="r")["0"].shape == (4, 384, 384)
