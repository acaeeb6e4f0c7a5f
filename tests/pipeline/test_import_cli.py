"""`emunet import` on a local Typer app: TIFF/HDF5 to OME-Zarr, refusal, clear errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
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


# --------------------------------------------------------------------------- voxel size


def _import(app, runner, src: Path | str, dst: Path, *extra: str):
    result = runner.invoke(app, ["import", str(src), str(dst), *extra])
    return result, " ".join(result.output.split())  # rich wraps long lines: compare unwrapped


def test_voxel_size_from_imagej_metadata_in_micrometres(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "ij.tif", DATA, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"},
    )
    result, text = _import(app, runner, tmp_path / "ij.tif", tmp_path / "ij.zarr")
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "ij.zarr").voxel_size == pytest.approx((50.0, 4.0, 4.0), rel=1e-9)
    assert "voxel 50,4,4 nm (z,y,x) from TIFF ImageJ metadata" in text and "warning" not in text


def test_voxel_size_from_resolution_tags_gives_z_equal_x_with_a_note(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cm.tif", DATA, photometric="minisblack", resolution=(1e7 / 5, 1e7 / 5), resolutionunit="CENTIMETER")
    result, text = _import(app, runner, tmp_path / "cm.tif", tmp_path / "cm.zarr")
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "cm.zarr").voxel_size == pytest.approx((5.0, 5.0, 5.0), rel=1e-9)
    assert "from TIFF resolution tags" in text and "no z spacing: z taken = x" in text


def test_72_dpi_is_a_writer_default_not_a_voxel_size(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "dpi.tif", DATA, photometric="minisblack", resolution=(72, 72), resolutionunit="INCH")
    result, text = _import(app, runner, tmp_path / "dpi.tif", tmp_path / "dpi.zarr")
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "dpi.zarr").voxel_size == (1.0, 1.0, 1.0)
    assert "states no voxel size and none was given: writing 1 nm" in text and "--voxel-size Z,Y,X" in text


def test_hdf5_and_n5_attributes_with_units(app, runner, tmp_path: Path) -> None:
    from tests.pipeline.conftest import write_n5

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["um"] = DATA
        f["um"].attrs["element_size_um"] = [0.03, 0.006, 0.006]
        f["res"] = DATA
        f["res"].attrs["resolution"] = [40.0, 8.0, 8.0]
    result, text = _import(app, runner, f"{tmp_path / 'v.h5'}:/um", tmp_path / "um.zarr")
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "um.zarr").voxel_size == pytest.approx((30.0, 6.0, 6.0), rel=1e-9)
    assert "from HDF5 attribute 'element_size_um'" in text
    result, text = _import(app, runner, f"{tmp_path / 'v.h5'}:/res", tmp_path / "res.zarr")
    assert open_volume(tmp_path / "res.zarr").voxel_size == (40.0, 8.0, 8.0)
    assert "from HDF5 attribute 'resolution'" in text and "states no unit: taken as nm" in text
    write_n5(tmp_path / "c.n5", "raw", DATA, (2, 8, 8), attrs={"pixelResolution": {"dimensions": [0.004, 0.004, 0.05], "unit": "um"}})
    result, text = _import(app, runner, f"{tmp_path / 'c.n5'}:raw", tmp_path / "n5.zarr")
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "n5.zarr").voxel_size == pytest.approx((50.0, 4.0, 4.0), rel=1e-9)
    assert "from N5 attribute 'pixelResolution' (unit 'um')" in text and "warning" not in text


@pytest.mark.parametrize(
    ("given", "expected", "warning"),
    [
        (["0.05,0.004,0.004"], (0.05, 0.004, 0.004), "looks like micrometres. Did you mean nm? --voxel-size 50,4,4"),
        (["0.05", "0.004", "0.004"], (0.05, 0.004, 0.004), "Did you mean nm? --voxel-size 50,4,4"),
        (["4", "4", "50"], (4.0, 4.0, 50.0), "if you gave x,y,z, that is --voxel-size 50,4,4"),
        (["50000,4,4"], (50000.0, 4.0, 4.0), "implausible for EM"),
        (["50,4,4"], (50.0, 4.0, 4.0), None),
    ],
)
def test_given_voxel_sizes_comma_form_and_warnings(app, runner, tmp_path: Path, given, expected, warning) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    result, text = _import(app, runner, tmp_path / "s.tif", tmp_path / "s.zarr", "--voxel-size", *given)
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "s.zarr").voxel_size == pytest.approx(expected, rel=1e-9)
    assert "from --voxel-size" in text
    if warning:
        assert "warning" in text and warning in text
    else:
        assert "warning" not in text


@pytest.mark.parametrize("given", [["50,4"], ["50,4,4,4"], ["50,four,4"], ["50", "4"]])
def test_a_malformed_voxel_size_answers_with_the_right_form_and_writes_nothing(app, runner, tmp_path: Path, given) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    result, text = _import(app, runner, tmp_path / "s.tif", tmp_path / "s.zarr", "--voxel-size", *given)
    assert result.exit_code == 2 and "Traceback" not in text
    assert "--voxel-size 50,4,4 or --voxel-size 50 4 4" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_the_option_before_the_paths_in_comma_form(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    result = runner.invoke(app, ["import", "--voxel-size", "30,5,5", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert open_volume(tmp_path / "s.zarr").voxel_size == (30.0, 5.0, 5.0)


def test_two_numbers_before_the_paths_are_refused_with_the_right_form(app, runner, tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    result = runner.invoke(app, ["import", "--voxel-size", "50", "4", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "got '50 4'" in text and "--voxel-size 50,4,4 or --voxel-size 50 4 4" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
