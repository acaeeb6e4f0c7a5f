"""The core's commands end to end: model-info, synthetic, train, predict, demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from emunet.cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_model_info_paper_json() -> None:
    result = invoke("model-info", "--preset", "paper", "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["input_shape"] == [572, 572] and info["output_shape"] == [388, 388]
    assert info["halo"] == [92, 92] and info["parameters"] == 31_030_658
    assert info["receptive_field"] == [185, 185] and info["bottleneck_receptive_field"] == [140, 140]


def test_model_info_illegal_tile_names_nearest() -> None:
    result = invoke("model-info", "--tile", "570")
    assert result.exit_code == 2
    assert "556 or 572" in result.output


def test_model_info_table_and_3d() -> None:
    result = invoke("model-info", "--preset", "aniso3d", "--tile", "76,252,252")
    assert result.exit_code == 0 and "halo" in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_api):
    """A short training through the `train-unet` flow (the default path), reporting to the
    session's Prefect server."""
    root = tmp_path_factory.mktemp("cli")
    assert invoke("synthetic", root / "img.tif", root / "lab.tif", "--shape", "3", "96", "96").exit_code == 0
    result = invoke(
        "train", "--images", root / "img.tif", "--labels", root / "lab.tif", "--instances", "--preset", "tiny",
        "--base-channels", "4", "--steps", "6", "--tile", "100", "--val-slices", "2", "--val-every", "3",
        "--out", root / "run", "--no-progress", "--device", "cpu",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 6 and "pixel_error" in summary["validation"]
    return root


def test_train_writes_checkpoints(trained) -> None:
    assert (trained / "run" / "best.safetensors").is_file()
    assert (trained / "run" / "last.safetensors").is_file()
    assert (trained / "run" / "best.json").is_file()


def test_predict_writes_float32_probabilities(trained) -> None:
    out = trained / "pred.tif"
    result = invoke("predict", trained / "img.tif", out, "--model", trained / "run" / "best.safetensors", "--device", "cpu")
    assert result.exit_code == 0, result.output
    prob = tifffile.imread(out)
    assert prob.dtype == np.float32 and prob.shape == (3, 96, 96)
    assert 0 <= prob.min() and prob.max() <= 1
    again = invoke("predict", trained / "img.tif", out, "--model", trained / "run" / "best.safetensors")
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert np.array_equal(tifffile.imread(out), prob)  # the existing output is untouched


def test_train_rejects_overlapping_slices(trained) -> None:
    result = invoke("train", "--images", trained / "img.tif", "--labels", trained / "lab.tif", "--train-slices", "0:3",
                    "--val-slices", "2", "--steps", "1", "--out", trained / "bad", "--no-progress")
    assert result.exit_code == 2 and "disjoint" in result.output


def test_predict_refuses_a_pickle(tmp_path, trained) -> None:
    import torch

    fake = tmp_path / "model.safetensors"
    torch.save({"x": 1}, fake)
    result = invoke("predict", trained / "img.tif", tmp_path / "o.tif", "--model", fake)
    assert result.exit_code == 2 and "never unpickles" in result.output
    assert not (tmp_path / "o.tif").exists()


def test_demo_runs_on_user_input(trained, prefect_api, tmp_path) -> None:
    """The segment-volume flow on a user's TIFF (imported to OME-Zarr) with a 1-worker Dask cluster."""
    result = invoke("demo", trained / "img.tif", "--ground-truth", trained / "lab.tif", "--workers", "1",
                    "--model", trained / "run" / "best.safetensors", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert 0 <= report["pixel_error"] <= 1 and report["blocks"].startswith("1 of 1")
    assert (tmp_path / "demo" / "overlay.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "segmentation.zarr" / "probability").is_dir()


def test_train_and_predict_3d_on_real_fibsem(shared_data, tmp_path) -> None:
    """3D from the same code: the FIB-SEM volume with dense instance labels (HDF5)."""
    fib = shared_data / "gala-fibsem"
    config = tmp_path / "fib.yaml"
    config.write_text(
        f"data: {{images: '{fib / 'train-image.h5'}:stack', labels: '{fib / 'train-gt.lzf.h5'}:stack'}}\n"
        "model: {preset: aniso3d, depth: 2, base_channels: 2, pool_factors: [[2, 2, 2], [2, 2, 2]]}\n"
        "train: {steps: 2, tile: [44, 52, 52], log_every: 1}\n"
    )
    result = invoke("train", "--config", config, "--instances", "--3d", "--out", tmp_path / "run", "--no-progress", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = tmp_path / "pred.tif"
    result = invoke("predict", f"{fib / 'train-image.h5'}:stack", out, "--model", tmp_path / "run" / "best.safetensors")
    assert result.exit_code == 0, result.output
    assert tifffile.imread(out).shape == (50, 100, 200)
