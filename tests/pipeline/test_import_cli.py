"""`emunet import` on a local Typer app: TIFF/HDF5 to OME-Zarr, refusal, clear errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import tifffile

from pipeline.volume import open_volume


DATA = np.random.default_rng(0).integers(0, 255, (3, 20, 30), dtype=np.uint8)


def test_tiff_with_voxel_size_and_chunks(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    args = ["import", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr"), "--voxel-size", "50", "4", "4", "--chunks", "1", "16", "16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    v = open_volume(tmp_path / "s.zarr")
    assert v.voxel_size == (50.0, 4.0, 4.0) and v.chunks == (1, 16, 16)
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)
    assert "(3, 20, 30)" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_hdf5_dataset(app, runner, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = DATA
    result = runner.invoke(app, ["import", f"{tmp_path / 'v.h5'}:/raw", str(tmp_path / "h.zarr")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(open_volume(tmp_path / "h.zarr").read(open_volume(tmp_path / "h.zarr").total_roi), DATA)


def test_errors_are_one_paragraph(app, runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["import", str(tmp_path / "missing.tif"), str(tmp_path / "o.zarr")])
    assert result.exit_code == 2 and "FileNotFoundError" in result.output and "Traceback" not in result.output
    tifffile.imwrite(tmp_path / "f.tif", DATA.astype(np.float64), photometric="minisblack")
    result = runner.invoke(app, ["import", str(tmp_path / "f.tif"), str(tmp_path / "o.zarr")])
    assert result.exit_code == 2 and "float64" in result.output
