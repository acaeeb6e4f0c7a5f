"""`pipeline.chunkwrite`: the same bytes on disk as zarr's own ``array[...] = ...``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from pipeline.chunkwrite import ChunkWriter
from pipeline.geometry import Roi

DENSE = {"write_empty_chunks": True}


def files(root: Path) -> dict[str, bytes]:
    """Every file's bytes; a gzip member's MTIME field (bytes 4–7, the time it was written) zeroed."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            found[str(p.relative_to(root))] = data[:4] + bytes(4) + data[8:] if data[:2] == b"\x1f\x8b" else data
    return found


def pair(tmp_path: Path, **kwargs):
    """Two arrays made alike: one written by zarr, one by `ChunkWriter`."""
    arrays = [zarr.create_array(str(tmp_path / name), config=DENSE, **kwargs) for name in ("zarr.zarr", "fast.zarr")]
    return arrays[0], arrays[1], ChunkWriter.for_array(arrays[1])


@pytest.mark.parametrize(
    ("dtype", "compressors"),
    [
        ("uint8", ZstdCodec(level=3)),
        ("float32", ZstdCodec(level=0)),
        ("float16", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
        ("uint8", GzipCodec(level=1)),
        ("uint16", (ZstdCodec(level=1), Crc32cCodec())),
        ("float32", None),
    ],
)
def test_bytes_equal_zarr_for_every_codec(tmp_path: Path, dtype: str, compressors) -> None:
    # odd shape: the last chunk of y and x reaches past the array's end (stored padded)
    expected, fast, writer = pair(tmp_path, shape=(3, 77, 50), chunks=(2, 32, 16), dtype=dtype, compressors=compressors)
    assert writer is not None
    data = (np.random.default_rng(0).random((3, 77, 50)) * 200).astype(dtype)
    expected[:] = data
    writer.write(Roi((0, 0, 0), (3, 77, 50)), data)
    assert files(tmp_path / "fast.zarr") == files(tmp_path / "zarr.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "fast.zarr"))[:], data)


@settings(max_examples=25, deadline=None)
@given(
    cz=st.integers(1, 3), cy=st.integers(1, 9), cx=st.integers(1, 9),
    nz=st.integers(1, 7), ny=st.integers(1, 23), nx=st.integers(1, 23), seed=st.integers(0, 2**16),
)
def test_any_region_of_whole_chunks_lands_where_zarr_puts_it(tmp_path_factory, cz, cy, cx, nz, ny, nx, seed) -> None:
    tmp_path = tmp_path_factory.mktemp("cw")
    expected, fast, writer = pair(tmp_path, shape=(nz, ny, nx), chunks=(cz, cy, cx), dtype="uint8")
    rng = np.random.default_rng(seed)
    # a random region of whole chunks (ending at the array's end or on a chunk boundary)
    lo = [int(rng.integers(0, -(-n // c))) * c for n, c in zip((nz, ny, nx), (cz, cy, cx))]
    hi = [min(n, low + int(rng.integers(1, 3)) * c) for low, n, c in zip(lo, (nz, ny, nx), (cz, cy, cx))]
    roi = Roi(lo, [h - low for h, low in zip(hi, lo)])
    data = rng.integers(0, 255, size=roi.shape, dtype=np.uint8)
    expected[roi.to_slices()] = data
    writer.write(roi, data)
    assert files(tmp_path / "fast.zarr") == files(tmp_path / "zarr.zarr")


def test_refuses_a_region_that_splits_a_chunk(tmp_path: Path) -> None:
    _, _, writer = pair(tmp_path, shape=(4, 64, 64), chunks=(1, 32, 32), dtype="uint8")
    with pytest.raises(ValueError, match="expected a region of whole chunks"):
        writer.write(Roi((0, 16, 0), (1, 32, 32)), np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="expected data of shape"):
        writer.write(Roi((0, 0, 0), (1, 32, 32)), np.zeros((1, 32, 31), np.uint8))
    assert not list((tmp_path / "fast.zarr").glob("c/**/*.partial"))


def test_keeps_zarrs_path_where_it_cannot_be_exact(tmp_path: Path) -> None:
    sharded = zarr.create_array(str(tmp_path / "s.zarr"), shape=(4, 64, 64), chunks=(1, 16, 16), shards=(1, 32, 32),
                                dtype="uint8", config=DENSE)
    sparse = zarr.create_array(str(tmp_path / "e.zarr"), shape=(4, 64, 64), chunks=(1, 16, 16), dtype="uint8")
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 64, 64), chunks=(1, 16, 16), dtype="uint8",
                                  config=DENSE)
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=(4, 64, 64), chunks=(1, 16, 16), dtype="uint8",
                           zarr_format=2, config=DENSE)
    assert ChunkWriter.for_array(sharded) is None
    assert ChunkWriter.for_array(sparse) is None  # empty chunks skipped: zarr decides which to write
    assert ChunkWriter.for_array(in_memory) is None
    assert ChunkWriter.for_array(v2) is None


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    _, fast, writer = pair(tmp_path, shape=(1, 32, 32), chunks=(1, 32, 32), dtype="uint8")

    def broken(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr("pipeline.markers.os.replace", broken)
    with pytest.raises(OSError, match="disk went away"):
        writer.write(Roi((0, 0, 0), (1, 32, 32)), np.ones((1, 32, 32), np.uint8))
    assert [p.name for p in (tmp_path / "fast.zarr").rglob("*") if p.is_file()] == ["zarr.json"]
