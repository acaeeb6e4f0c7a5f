"""The minimal N5 reader against an independent writer of the spec (tests/pipeline/conftest.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.n5 import N5Dataset, N5Error, split_n5
from tests.pipeline.conftest import write_n5


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "int64"])
@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_reads_every_box_with_edge_blocks(tmp_path: Path, dtype: str, compression: str) -> None:
    data = (np.arange(5 * 13 * 11) % 251).astype(dtype).reshape(5, 13, 11)
    write_n5(tmp_path / "c.n5", "d", data, (2, 4, 3), compression=compression)
    ds = N5Dataset.open(f"{tmp_path / 'c.n5'}:d")
    assert ds.shape == (5, 13, 11) and ds.chunks == (2, 4, 3) and ds.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ds[:, :, :], data)
    np.testing.assert_array_equal(ds[1:4, 3:12, 2:3], data[1:4, 3:12, 2:3])


def test_missing_blocks_read_as_zero(tmp_path: Path) -> None:
    data = np.zeros((4, 8, 8), np.uint8)
    data[2:, 4:, :4] = 7
    write_n5(tmp_path / "c.n5", "d", data, (2, 4, 4), skip_zero_blocks=True)
    assert len(list((tmp_path / "c.n5" / "d").rglob("*"))) < 10
    np.testing.assert_array_equal(N5Dataset.open(tmp_path / "c.n5" / "d")[:], data)


def test_header_is_x_first_and_big_endian(tmp_path: Path) -> None:
    """The spec's example: a uint16 block of 1×2×3 (x-first) with values 1..6, raw."""
    path = tmp_path / "c.n5" / "d"
    path.mkdir(parents=True)
    meta = {"dimensions": [1, 2, 3], "blockSize": [1, 2, 3], "dataType": "uint16", "compression": {"type": "raw"}}
    (path / "attributes.json").write_text(json.dumps(meta))
    (path / "0" / "0").mkdir(parents=True)
    block = struct.pack(">HH3I", 0, 3, 1, 2, 3) + struct.pack(">6H", 1, 2, 3, 4, 5, 6)
    (path / "0" / "0" / "0").write_bytes(block)
    ds = N5Dataset.open(path)
    assert ds.shape == (3, 2, 1)
    np.testing.assert_array_equal(ds[:].ravel(), [1, 2, 3, 4, 5, 6])


def test_resolution_is_reversed_to_zyx(tmp_path: Path) -> None:
    write_n5(tmp_path / "c.n5", "d", np.zeros((2, 2, 2), np.uint8), (2, 2, 2), attrs={"pixelResolution": {"dimensions": [4, 5, 40], "unit": "nm"}})
    assert N5Dataset.open(tmp_path / "c.n5/d").resolution() == (40.0, 5.0, 4.0)


def test_errors(tmp_path: Path) -> None:
    assert split_n5("a/b.n5:x/y") == (Path("a/b.n5"), "x/y")
    with pytest.raises(FileNotFoundError):
        N5Dataset.open(tmp_path / "none.n5")
    write_n5(tmp_path / "c.n5", "d", np.zeros((2, 2, 2), np.uint8), (2, 2, 2))
    with pytest.raises(N5Error, match="name the dataset"):
        N5Dataset.open(tmp_path / "c.n5")
    meta = json.loads((tmp_path / "c.n5" / "d" / "attributes.json").read_text())
    meta["compression"] = {"type": "lz4"}
    (tmp_path / "c.n5" / "d" / "attributes.json").write_text(json.dumps(meta))
    with pytest.raises(N5Error, match="lz4"):
        N5Dataset.open(tmp_path / "c.n5:d")[:]
