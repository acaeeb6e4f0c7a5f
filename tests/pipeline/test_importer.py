"""`import_volume`: TIFF, HDF5 and N5 to OME-Zarr v3, streamed, atomic, refusing to clobber."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import pipeline.importer as importer
from pipeline.importer import Source, import_volume
from pipeline.volume import UnsupportedVolumeError, multiscales_of, open_volume
from tests.pipeline.conftest import write_n5

DATA = np.random.default_rng(1).integers(0, 60000, (5, 33, 41), dtype=np.uint16)


def check_ome(dst: Path, voxel: tuple[float, float, float]) -> None:
    group = zarr.open_group(str(dst), mode="r")
    assert group.metadata.zarr_format == 3
    attrs = group.attrs.asdict()
    (multiscale,) = multiscales_of(attrs)
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "nanometer" and a["type"] == "space" for a in multiscale["axes"])
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == list(voxel)
    assert attrs["multiscales"][0]["version"] == "0.4" and attrs["ome"]["version"] == "0.5"
    assert group["0"].metadata.dimension_names == ("z", "y", "x")
    assert [type(c).__name__ for c in group["0"].compressors] == ["ZstdCodec"]


def test_tiff_stack(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    v = import_volume(tmp_path / "s.tif", tmp_path / "s.zarr", voxel_size=(50, 4, 4), chunks=(2, 16, 16))
    assert v.chunks == (2, 16, 16) and v.voxel_size == (50.0, 4.0, 4.0) and v.dtype == np.uint16
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)
    check_ome(tmp_path / "s.zarr", (50.0, 4.0, 4.0))
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_compressed_tiff_reads_pages(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", DATA, photometric="minisblack", compression="zlib")
    v = import_volume(tmp_path / "c.tif", tmp_path / "c.zarr", chunks=(2, 16, 16))
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)


def test_2d_tiff_becomes_one_slice(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "one.tif", DATA[0].astype(np.uint8), photometric="minisblack")
    v = import_volume(tmp_path / "one.tif", tmp_path / "one.zarr")
    assert v.shape == (1, 33, 41)


def test_hdf5_dataset_streams_chunks_and_reads_resolution(tmp_path: Path, monkeypatch) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as f:
        ds = f.create_dataset("grp/raw", data=DATA.astype(np.float32))
        ds.attrs["resolution"] = [30.0, 6.0, 6.0]
    reads: list[tuple[int, ...]] = []
    original = importer._hdf5_source

    def spy(spec: str) -> Source:
        src = original(spec)
        read = src.read

        def counted(key):
            out = read(key)
            reads.append(out.shape)
            return out

        src.read = counted
        return src

    monkeypatch.setattr(importer, "_hdf5_source", spy)
    v = import_volume(f"{tmp_path / 'v.h5'}:/grp/raw", tmp_path / "h.zarr", chunks=(2, 16, 16))
    assert v.voxel_size == (30.0, 6.0, 6.0) and v.dtype == np.float32
    np.testing.assert_array_equal(v.read(v.total_roi), DATA.astype(np.float32))
    assert max(int(np.prod(s)) for s in reads) <= 2 * 16 * 16  # one chunk at a time


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_n5_dataset(tmp_path: Path, compression: str) -> None:
    data = DATA.astype(np.uint8)
    write_n5(tmp_path / "c.n5", "volumes/raw", data, (2, 16, 16), compression=compression, attrs={"resolution": [4, 4, 40]})
    v = import_volume(f"{tmp_path / 'c.n5'}:volumes/raw", tmp_path / "n.zarr", chunks=(3, 10, 10))
    np.testing.assert_array_equal(v.read(v.total_roi), data)
    assert v.voxel_size == (40.0, 4.0, 4.0)  # N5 resolution is x-first


def test_existing_destination_is_refused_unless_overwrite(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    import_volume(tmp_path / "s.tif", tmp_path / "s.zarr")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_volume(tmp_path / "s.tif", tmp_path / "s.zarr")
    v = import_volume(tmp_path / "s.tif", tmp_path / "s.zarr", overwrite=True, voxel_size=(1, 2, 3))
    assert v.voxel_size == (1.0, 2.0, 3.0)


def test_a_failed_import_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}

    def failing(key):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return np.zeros(tuple(s.stop - s.start for s in key), np.uint8)

    monkeypatch.setattr(importer, "open_source", lambda src: Source("fake", (4, 32, 32), np.dtype("uint8"), failing))
    with pytest.raises(OSError, match="disk went away"):
        import_volume("whatever.tif", tmp_path / "out.zarr", chunks=(1, 32, 32))
    assert list(tmp_path.iterdir()) == []


KILLED_IMPORT = """
import sys, time
import numpy as np
import pipeline.importer as importer
from pipeline.importer import Source

def reading(key):
    time.sleep(60)  # killed here, with the staging folder written
    return np.ones(tuple(s.stop - s.start for s in key), np.uint8)

importer.open_source = lambda src: Source("fake", (3, 8, 8), np.dtype("uint8"), reading)
importer.import_volume("x.tif", sys.argv[1], chunks=(1, 8, 8))
"""


def test_the_next_import_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the staging folder stays. The next import into the same DST
    removes it once its process is gone; one from another host is only named."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(tmp_path / "out.zarr")], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.zarr.partial-*/zarr.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = tmp_path.glob(".out.zarr.partial-*")
    other = tmp_path / ".out.zarr.partial-0othrhst-4242-abcdef12"  # another machine's, on a shared disk
    other.mkdir()
    notes: list[str] = []
    tifffile.imwrite(tmp_path / "x.tif", DATA[:2], photometric="minisblack")
    import_volume(tmp_path / "x.tif", tmp_path / "out.zarr", warn=notes.append)
    assert not left.exists() and other.exists()
    assert any(f"removed {left.name}" in n and f"(process {proc.pid})" in n for n in notes), notes
    assert any(f"found {other.name} beside out.zarr" in n for n in notes), notes
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...], DATA[:2])


def test_half_written_import_is_never_presented_as_complete(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def reading(key):
        seen.append((tmp_path / "out.zarr").exists())
        return np.ones(tuple(s.stop - s.start for s in key), np.uint8)

    monkeypatch.setattr(importer, "open_source", lambda src: Source("fake", (3, 8, 8), np.dtype("uint8"), reading))
    import_volume("x.tif", tmp_path / "out.zarr", chunks=(1, 8, 8))
    assert seen == [False, False, False] and (tmp_path / "out.zarr").exists()


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such path"):
        import_volume(tmp_path / "missing.tif", tmp_path / "o.zarr")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="expected a TIFF"):
        import_volume(tmp_path / "x.png", tmp_path / "o.zarr")
    tifffile.imwrite(tmp_path / "i.tif", DATA.astype(np.int32), photometric="minisblack")
    with pytest.raises(UnsupportedVolumeError, match="got int32"):
        import_volume(tmp_path / "i.tif", tmp_path / "o.zarr")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(UnsupportedVolumeError, match="colour"):
        import_volume(tmp_path / "rgb.tif", tmp_path / "o.zarr")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="one dataset"):
        import_volume(tmp_path / "two.h5", tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="ending in .zarr"):
        import_volume(tmp_path / "two.h5:a", tmp_path / "o.n5")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.realdata
def test_isbi_test_volume_round_trip(isbi_dir: Path, tmp_path: Path) -> None:
    src = isbi_dir / "test-volume.tif"
    v = import_volume(src, tmp_path / "isbi.zarr", voxel_size=(50, 4, 4), chunks=(8, 256, 256))
    assert v.shape == (30, 512, 512) and v.dtype == np.uint8
    np.testing.assert_array_equal(open_volume(tmp_path / "isbi.zarr").read(v.total_roi), tifffile.imread(src))
    check_ome(tmp_path / "isbi.zarr", (50.0, 4.0, 4.0))


@pytest.mark.realdata
def test_gala_fibsem_hdf5_round_trip(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "gala-fibsem" / "train-image.h5"
    v = import_volume(f"{src}:stack", tmp_path / "fib.zarr", chunks=(16, 64, 64), voxel_size=(10, 10, 10))
    with h5py.File(src, "r") as f:
        expected = f["stack"][...]
    assert v.shape == (50, 100, 200)
    np.testing.assert_array_equal(v.read(v.total_roi), expected)


def test_import_to_s3(tmp_path: Path, s3) -> None:
    tifffile.imwrite(tmp_path / "s.tif", DATA, photometric="minisblack")
    url = f"s3://{s3['bucket']}/imported.zarr"
    v = import_volume(tmp_path / "s.tif", url, chunks=(2, 16, 16), storage_options=s3["storage_options"])
    np.testing.assert_array_equal(v.read(v.total_roi), DATA)
    names = s3["fs"].ls(s3["bucket"], refresh=True)
    assert [n.rsplit("/", 1)[-1] for n in names] == ["imported.zarr"]  # no partial prefix left
    with pytest.raises(FileExistsError):
        import_volume(tmp_path / "s.tif", url, storage_options=s3["storage_options"])


def test_source_units_are_converted_to_nm(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["raw"] = DATA[:2, :8, :8]
        f["raw"].attrs["resolution"] = [0.04, 0.008, 0.008]
        f["raw"].attrs["unit"] = "micrometer"
    notes: list[str] = []
    v = import_volume(f"{tmp_path / 'u.h5'}:/raw", tmp_path / "u.zarr", warn=notes.append)
    assert v.voxel_size == pytest.approx((40.0, 8.0, 8.0), rel=1e-9) and notes == []
    attrs = zarr.open_group(str(tmp_path / "u.zarr"), mode="r").attrs["emunet_import"]
    assert attrs["voxel_size_source"] == "source" and attrs["voxel_size_from"] == "HDF5 attribute 'resolution' (unit 'micrometer')"
    write_n5(tmp_path / "c.n5", "d", DATA[:2, :8, :8], (2, 8, 8), attrs={"resolution": [4, 4, 40], "units": ["nm", "nm", "nm"]})
    v = import_volume(f"{tmp_path / 'c.n5'}:d", tmp_path / "n.zarr", warn=notes.append)
    assert v.voxel_size == (40.0, 4.0, 4.0) and notes == []


def test_an_unknown_unit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["raw"] = DATA[:2, :8, :8]
        f["raw"].attrs["resolution"] = [40, 4, 4]
        f["raw"].attrs["unit"] = "pixel"
    with pytest.raises(ValueError, match="expected a length unit .* got 'pixel'; pass --voxel-size"):
        import_volume(f"{tmp_path / 'u.h5'}:/raw", tmp_path / "u.zarr")
    assert not (tmp_path / "u.zarr").exists()
    v = import_volume(f"{tmp_path / 'u.h5'}:/raw", tmp_path / "u.zarr", voxel_size=(40, 4, 4))  # the way out
    assert v.voxel_size == (40.0, 4.0, 4.0)
