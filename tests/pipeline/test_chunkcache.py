"""`CachedVolume`: the voxels `Volume.read` gives, each chunk read once, same errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.blocks import read_block
from pipeline.chunkcache import CachedVolume
from pipeline.geometry import Roi
from pipeline.plan import SegmentPlan
from pipeline.volume import MissingChunkError, open_volume
from tests.pipeline.conftest import write_zarr


@pytest.mark.parametrize("chunks", [(2, 16, 16), (1, 7, 9), (3, 40, 40)])
def test_equal_to_volume_read_for_any_roi(tmp_path: Path, chunks: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (5, 37, 41), dtype=np.uint8)
    write_zarr(tmp_path / "v.zarr", data, chunks)
    volume = open_volume(str(tmp_path / "v.zarr"))
    cached = CachedVolume(volume)
    assert cached.enabled and cached.shape == volume.shape and cached.total_roi == volume.total_roi
    for _ in range(60):
        begin = [int(rng.integers(0, s)) for s in data.shape]
        shape = [int(rng.integers(1, s - b + 1)) for b, s in zip(begin, data.shape)]
        roi = Roi(begin, shape)
        np.testing.assert_array_equal(cached.read(roi), volume.read(roi))
    grid = [-(-s // c) for s, c in zip(data.shape, chunks)]
    assert cached.reads <= int(np.prod(grid))  # each chunk read at most once (all fit the cache)
    with pytest.raises(ValueError, match="inside the volume"):
        cached.read(Roi((0, 0, 0), (6, 1, 1)))


def test_blocks_with_mirrored_context_read_as_before(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    url = str(tmp_path / "v.zarr")
    write_zarr(url, data, (1, 32, 32))
    plan = SegmentPlan(url, str(tmp_path / "out.zarr"), (2, 64, 64), (1, 16, 16), (1, 16, 16), ((0, 0), (9, 9), (9, 9)))
    volume = open_volume(url)
    cached = CachedVolume(volume)
    for block_id in plan.block_ids():
        np.testing.assert_array_equal(read_block(plan, block_id, cached), read_block(plan, block_id, volume))
    assert cached.reads == 2 * 2 * 2  # every input chunk once


def test_small_cache_evicts_and_large_chunks_pass_through(tmp_path: Path) -> None:
    data = np.arange(4 * 32 * 32, dtype=np.uint16).reshape(4, 32, 32)
    write_zarr(tmp_path / "v.zarr", data, (1, 16, 16))
    volume = open_volume(str(tmp_path / "v.zarr"))
    small = CachedVolume(volume, max_bytes=2 * 16 * 16 * 2)  # two chunks
    roi = Roi((0, 0, 0), (4, 32, 32))
    np.testing.assert_array_equal(small.read(roi), data)
    np.testing.assert_array_equal(small.read(roi), data)
    assert small.reads == 32 and small._bytes <= small.max_bytes
    direct = CachedVolume(volume, max_chunk_bytes=100)  # a chunk of 512 bytes: not cached
    assert not direct.enabled
    np.testing.assert_array_equal(direct.read(Roi((1, 3, 5), (2, 20, 20))), data[1:3, 3:23, 5:25])
    assert direct.reads == 0


def test_missing_chunk_raises_as_the_volume_does(tmp_path: Path) -> None:
    import zarr

    array = zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 32, 32), chunks=(1, 16, 16), dtype="uint8",
                              config={"write_empty_chunks": False})  # fmt: skip
    array[...] = 7
    array[0, :16, :16] = 0  # the fill value: that chunk is not stored
    cached = CachedVolume(open_volume(str(tmp_path / "v.zarr")))
    np.testing.assert_array_equal(cached.read(Roi((1, 0, 0), (1, 32, 32))), np.full((1, 32, 32), 7, np.uint8))
    with pytest.raises(MissingChunkError, match=r"chunk \(0, 0, 0\)"):
        cached.read(Roi((0, 10, 10), (1, 10, 10)))
    sparse = CachedVolume(open_volume(str(tmp_path / "v.zarr"), sparse=True))
    assert sparse.read(Roi((0, 10, 10), (1, 10, 10)))[0, 0, 0] == 0
