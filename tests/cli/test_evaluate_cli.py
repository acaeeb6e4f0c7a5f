"""`emunet evaluate` on tiny TIFF and Zarr files (a local Typer app, CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import typer
import zarr
from typer.testing import CliRunner

from emunet.cli.evaluate import register

app = typer.Typer()
register(app)


@app.callback()
def _root() -> None:  # keep "evaluate" as an explicit sub-command
    """Test app."""


runner = CliRunner()


def _gt() -> np.ndarray:
    gt = np.full((2, 24, 30), 255, np.uint8)
    gt[:, :, 14:16] = 0  # two cells per slice
    return gt


@pytest.fixture()
def files(tmp_path):
    gt = _gt()
    pred = np.where(gt > 0, 0.95, 0.05).astype(np.float32)
    pred[1, 10:13, 14:16] = 0.95  # a merge in slice 1
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tiff", pred)
    group = zarr.open_group(str(tmp_path / "vol.zarr"), mode="w")
    group.create_array("pred/p0", shape=pred.shape, dtype="float32")[...] = pred
    zarr.save_array(str(tmp_path / "gt.zarr"), gt)
    return tmp_path


def test_json_output_from_tiff(files):
    res = runner.invoke(app, ["evaluate", str(files / "pred.tiff"), str(files / "gt.tif"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_slices"] == 2 and out["warping_merges"] > 0 and out["rand_error"] > 0
    assert out["pixel_error"] < 0.05
    assert "curves" not in out


def test_zarr_group_path_and_curves(files):
    pred = f"{files / 'vol.zarr'}:pred/p0"
    res = runner.invoke(app, ["evaluate", pred, str(files / "gt.zarr"), "--json", "--curves"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["curves"]["rand_error"]["thresholds"]) == 11
    assert len(out["curves"]["warping_error"]["values"]) == 10
    tiff = json.loads(runner.invoke(app, ["evaluate", str(files / "pred.tiff"), str(files / "gt.tif"), "--json"]).stdout)
    assert {k: v for k, v in out.items() if k not in ("pred", "gt", "curves")} == \
        {k: v for k, v in tiff.items() if k not in ("pred", "gt")}


def test_table_output_and_2d_image(files):
    tifffile.imwrite(files / "gt2d.tif", _gt()[0])
    res = runner.invoke(app, ["evaluate", str(files / "gt2d.tif"), str(files / "gt2d.tif"), "--curves"])
    assert res.exit_code == 0, res.output
    assert "Pixel error" in res.stdout and "Warping error" in res.stdout and "1 slice(s)" in res.stdout


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: [str(d / "missing.tif"), str(d / "gt.tif")], "expected PRED to be an existing TIFF file"),
        (lambda d: [str(d / "pred.png"), str(d / "gt.tif")], "expected PRED as a .tif/.tiff file or a Zarr array"),
        (lambda d: [f"{d / 'vol.zarr'}:nope", str(d / "gt.tif")], "expected PRED to name a Zarr array"),
        (lambda d: [str(d / "pred.tiff"), str(d / "gt2d.tif")], "expected pred and gt of the same shape"),
    ],
)
def test_bad_input_exits_with_code_2(files, make_args, message):
    tifffile.imwrite(files / "gt2d.tif", _gt()[0])
    res = runner.invoke(app, ["evaluate", *make_args(files)])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())


def test_values_outside_unit_interval_are_rejected(files):
    tifffile.imwrite(files / "bad.tif", np.full((24, 30), 2.0, np.float32))
    tifffile.imwrite(files / "gt2d.tif", _gt()[0])
    res = runner.invoke(app, ["evaluate", str(files / "bad.tif"), str(files / "gt2d.tif")])
    assert res.exit_code == 2
    assert "expected pred values in [0, 1]" in " ".join(res.output.split())


def test_an_unfinished_segment_output_is_scored_with_a_warning(tmp_path) -> None:
    """Blocks that never ran read as 0 (membrane): the scores are then not the model's, and
    the command says so (finished: no warning)."""
    import torch

    from pipeline.blocks import run_plan_locally
    from pipeline.ledger import Ledger
    from pipeline.plan import make_plan
    from tests.pipeline.conftest import write_zarr
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    gt = np.pad(_gt(), ((0, 0), (0, 0), (0, 2)), constant_values=255)  # (2, 24, 32): blocks on the model's lattice
    write_zarr(tmp_path / "in.zarr", gt, (1, 24, 32))
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    torch.manual_seed(0)
    model = UNet(preset("tiny").replace(base_channels=2)).eval()
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "seg.zarr"), gt.shape, model.config, block_shape=(1, 24, 32))
    run_plan_locally(plan, predictor=TilePredictor(model, Normalization(), PredictConfig(device="cpu")))
    finished = runner.invoke(app, ["evaluate", str(tmp_path / "seg.zarr"), str(tmp_path / "gt.tif")])
    assert finished.exit_code == 0 and "warning" not in finished.output, finished.output
    Ledger.open(str(tmp_path / "seg.zarr")).unmark_done(1)
    unfinished = runner.invoke(app, ["evaluate", str(tmp_path / "seg.zarr"), str(tmp_path / "gt.tif")])
    text = " ".join(unfinished.output.split())
    assert unfinished.exit_code == 0 and "unfinished emunet output (1 of 2 blocks done" in text and "--resume" in text


def test_ground_truth_imported_as_ome_zarr_is_read_at_full_resolution(files) -> None:
    """`emunet import gt.tif gt-ome.zarr` makes an OME-Zarr image group: its level 0 is the GT."""
    from pipeline.importer import import_volume

    import_volume(files / "gt.tif", files / "gt-ome.zarr", voxel_size=(50, 4, 4))
    plain = runner.invoke(app, ["evaluate", str(files / "pred.tiff"), str(files / "gt.tif"), "--json"])
    ome = runner.invoke(app, ["evaluate", str(files / "pred.tiff"), str(files / "gt-ome.zarr"), "--json"])
    assert plain.exit_code == 0 and ome.exit_code == 0, ome.output
    strip = lambda out: {k: v for k, v in json.loads(out).items() if k not in ("pred", "gt")}  # noqa: E731
    assert strip(ome.stdout) == strip(plain.stdout)


def test_an_emunet_output_given_as_ground_truth_is_refused(files) -> None:
    """`evaluate gt.tif pred.tif` with emunet's own probability TIFF (or segment output) as GT:
    the scores would print; the arguments were swapped."""
    from unetcore.io import write_tiff

    prob = write_tiff(files / "p.tif", tifffile.imread(files / "pred.tiff"), kind="probability")
    seg = zarr.open_group(str(files / "seg.zarr"), mode="w")
    seg.create_array("probability", data=tifffile.imread(files / "pred.tiff"))
    seg.attrs["emunet"] = {"plan": {}}
    for gt, made in ((prob, "a probability TIFF emunet wrote"), (files / "seg.zarr", "an `emunet segment` output")):
        result = runner.invoke(app, ["evaluate", str(files / "gt.tif"), str(gt)])
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and made in text and "PRED first, then GT" in text, result.output
    assert runner.invoke(app, ["evaluate", str(prob), str(files / "gt.tif")]).exit_code == 0  # the right order
