"""Opening volumes: Zarr v2 and v3, arrays in groups, OME-Zarr levels, file:// and s3:// URLs,
and the clear errors for what is not a 3D uint8/uint16/float32 volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.volume import (
    NotAZarrError,
    UnsupportedVolumeError,
    VolumeNotFoundError,
    open_volume,
    redact_url,
    split_url,
)
from tests.pipeline.conftest import SECRET, write_ome, write_zarr

DATA = np.random.default_rng(0).integers(0, 255, (4, 20, 24), dtype=np.uint8)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_array_v2_and_v3(tmp_path: Path, zarr_format: int) -> None:
    write_zarr(tmp_path / "a.zarr", DATA, (2, 8, 8), zarr_format=zarr_format)
    v = open_volume(tmp_path / "a.zarr")
    assert v.shape == DATA.shape and v.dtype == np.uint8 and v.chunks == (2, 8, 8)
    assert v.zarr_format == zarr_format and v.axes == ("z", "y", "x") and v.shards is None
    assert v.voxel_size == (1.0, 1.0, 1.0) and v.voxel_size_source == "default"
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_supported_dtypes_and_resolution_attribute(tmp_path: Path, dtype: str) -> None:
    write_zarr(tmp_path / "a.zarr", DATA.astype(dtype), (4, 20, 24), attributes={"resolution": [40, 8, 8]})
    v = open_volume(str(tmp_path / "a.zarr"))
    assert v.dtype == np.dtype(dtype) and v.voxel_size == (40.0, 8.0, 8.0)


def test_sharded_array_reports_shards(tmp_path: Path) -> None:
    write_zarr(tmp_path / "s.zarr", DATA, (2, 4, 4), shards=(2, 20, 24))
    v = open_volume(tmp_path / "s.zarr")
    assert v.chunks == (2, 4, 4) and v.shards == (2, 20, 24)


@pytest.mark.parametrize("sep", ["/", ":"])
def test_array_inside_a_group(tmp_path: Path, sep: str) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    sub = group.create_group("volumes")
    a = sub.create_array("raw", shape=DATA.shape, chunks=(4, 10, 12), dtype="uint8", dimension_names=("z", "y", "x"))
    a[...] = DATA
    v = open_volume(f"{tmp_path / 'g.zarr'}{sep}volumes/raw")
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)


def test_split_url() -> None:
    assert split_url("a.zarr:raw/s0") == ("a.zarr", "raw/s0")
    assert split_url("s3://b/a.zarr/raw") == ("s3://b/a.zarr", "raw")
    assert split_url("s3://b/a.zarr:raw") == ("s3://b/a.zarr", "raw")
    assert split_url("file:///d/a.zarr") == ("/d/a.zarr", "")
    assert split_url("/d/vol") == ("/d/vol", "")
    assert redact_url("s3://user:pw@bucket/a.zarr?x=1") == "s3://bucket/a.zarr"


def test_file_url(tmp_path: Path) -> None:
    write_zarr(tmp_path / "a.zarr", DATA, (2, 8, 8))
    v = open_volume(f"file://{tmp_path / 'a.zarr'}")
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)


def test_ome_multiscale_level_choice(tmp_path: Path) -> None:
    levels = [DATA, DATA[:, ::2, ::2].copy(), DATA[:, ::4, ::4].copy()]
    write_ome(tmp_path / "ome.zarr", levels, (50.0, 4.0, 4.0))
    v0 = open_volume(tmp_path / "ome.zarr")
    assert v0.level == 0 and v0.shape == DATA.shape and v0.voxel_size == (50.0, 4.0, 4.0)
    assert v0.voxel_size_source == "ome"
    v2 = open_volume(tmp_path / "ome.zarr", level=2)
    assert v2.shape == (4, 5, 6) and v2.voxel_size == (50.0, 16.0, 16.0)
    np.testing.assert_array_equal(v2.read(v2.total_roi), levels[2])
    # naming the level's array directly still finds its voxel size in the parent group
    v1 = open_volume(f"{tmp_path / 'ome.zarr'}/s1")
    assert v1.level == 1 and v1.voxel_size == (50.0, 8.0, 8.0)
    with pytest.raises(ValueError, match=r"level in 0..2, got 3"):
        open_volume(tmp_path / "ome.zarr", level=3)


def test_ome_units_are_converted_to_nanometres(tmp_path: Path) -> None:
    write_ome(tmp_path / "um.zarr", [DATA], (0.05, 0.004, 0.004), unit="micrometer")
    assert open_volume(tmp_path / "um.zarr").voxel_size == pytest.approx((50.0, 4.0, 4.0))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFoundError, match="no such path") as err:
        open_volume(tmp_path / "nope.zarr")
    assert isinstance(err.value, FileNotFoundError)
    write_zarr(tmp_path / "a.zarr", DATA, (2, 8, 8))
    with pytest.raises(VolumeNotFoundError):
        open_volume(f"{tmp_path / 'a.zarr'}/missing")


def test_not_zarr(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(NotAZarrError, match="without Zarr metadata"):
        open_volume(tmp_path / "plain")


def test_group_without_multiscales_names_its_arrays(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(2, 2, 2), dtype="uint8")
    with pytest.raises(NotAZarrError, match=r"\['raw'\].*name one"):
        open_volume(tmp_path / "g.zarr")


def test_wrong_ndim(tmp_path: Path) -> None:
    write_zarr(tmp_path / "2d.zarr", DATA[0], (8, 8))
    with pytest.raises(UnsupportedVolumeError, match=r"expected a 3D \(z, y, x\) volume .* got 2D"):
        open_volume(tmp_path / "2d.zarr")
    write_zarr(tmp_path / "4d.zarr", DATA[None], (1, 2, 8, 8))
    with pytest.raises(UnsupportedVolumeError, match="got 4D"):
        open_volume(tmp_path / "4d.zarr")


@pytest.mark.parametrize("dtype", ["int32", "float64", "uint32"])
def test_unsupported_dtype(tmp_path: Path, dtype: str) -> None:
    write_zarr(tmp_path / "a.zarr", DATA.astype(dtype), (2, 8, 8))
    with pytest.raises(UnsupportedVolumeError, match=f"uint8, uint16, float32, got {dtype}"):
        open_volume(tmp_path / "a.zarr")


def test_s3_volume_on_a_local_moto_server(s3) -> None:
    opts, bucket = s3["storage_options"], s3["bucket"]
    url = f"s3://{bucket}/em.zarr"
    array = zarr.create_array(url, shape=DATA.shape, chunks=(2, 8, 8), dtype="uint8", storage_options=opts)
    array[...] = DATA
    v = open_volume(url, storage_options=opts)
    assert v.shape == DATA.shape and v.url == url
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)
    assert SECRET not in repr(v)
    with pytest.raises(VolumeNotFoundError):
        open_volume(f"s3://{bucket}/absent.zarr", storage_options=opts)
