"""A minimal, read-only N5 dataset reader (zarr 3 cannot read N5).

Per the N5 file-system specification (saalfeldlab/n5):

* a dataset is a directory whose ``attributes.json`` holds ``dimensions``, ``blockSize``,
  ``dataType`` and ``compression`` (``{"type": "raw" | "gzip" | "zlib" | "bzip2" | "xz" |
  "blosc" | "zstd", ...}``, or the legacy ``"compressionType"``);
* ``dimensions`` and ``blockSize`` list the axes **x first** (Java/ImgLib2 order); a
  numpy view in (z, y, x) order reverses them;
* block ``(i_x, i_y, i_z)`` is the file ``dataset/i_x/i_y/i_z``; absent blocks are empty
  (read as 0);
* a block file is a big-endian header — mode (uint16: 0 default, 1 varlength), number of
  dimensions (uint16), the block's size per dimension (uint32 each, x first; end blocks may be
  smaller), and for varlength mode the element count (uint32) — followed by the compressed
  big-endian values, x varying fastest (so C order with the reversed shape).

Addressed as ``container.n5/path/to/dataset`` or ``container.n5:path/to/dataset``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N5_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")


class N5Error(ValueError):
    """An N5 dataset this reader cannot interpret (names what it expected)."""


def split_n5(spec: str) -> tuple[Path, str]:
    """``c.n5:ds`` or ``c.n5/ds`` → (Path('c.n5'), 'ds')."""
    spec = str(spec)
    for marker in (".n5:", ".n5/"):
        if marker in spec:
            head, _, dataset = spec.partition(marker)
            return Path(head + ".n5"), dataset.strip("/")
    return Path(spec), ""


def is_n5(spec: str) -> bool:
    path, _ = split_n5(spec)
    return path.suffix == ".n5" or (path / "attributes.json").is_file()


def _decompress(data: bytes, compression: dict[str, Any]) -> bytes:
    kind = compression.get("type", "raw")
    if kind == "raw":
        return data
    if kind == "gzip":
        if compression.get("useZlib"):
            return zlib.decompress(data)
        return gzip.decompress(data)
    if kind == "zlib":
        return zlib.decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    if kind in ("blosc", "zstd"):
        import numcodecs

        codec = numcodecs.Blosc() if kind == "blosc" else numcodecs.Zstd()
        return bytes(codec.decode(data))
    raise N5Error(
        f"expected N5 compression raw, gzip, zlib, bzip2, xz, blosc or zstd, got {kind!r}; "
        "re-save the dataset with one of these"
    )


@dataclass(frozen=True)
class N5Dataset:
    """One N5 dataset, viewed in numpy (z, y, x) order: ``shape``, ``chunks``, ``dtype``."""

    path: Path
    shape: tuple[int, ...]  # numpy order (slowest axis first)
    chunks: tuple[int, ...]  # numpy order
    dtype: np.dtype
    compression: dict[str, Any]
    attrs: dict[str, Any]

    @classmethod
    def open(cls, spec: str | Path) -> N5Dataset:
        container, dataset = split_n5(str(spec))
        path = container / dataset if dataset else container
        meta_file = path / "attributes.json"
        if not path.exists():
            raise FileNotFoundError(f"expected an N5 dataset at {spec}, got no such path {path}")
        if not meta_file.is_file():
            raise N5Error(f"expected an N5 dataset with attributes.json at {path}, got none")
        attrs = json.loads(meta_file.read_text())
        missing = [k for k in ("dimensions", "blockSize", "dataType") if k not in attrs]
        if missing:
            raise N5Error(
                f"expected an N5 dataset (attributes {missing} present) at {path}, got a group "
                f"with attributes {sorted(attrs)[:8]}; name the dataset as {container}:NAME"
            )
        if attrs["dataType"] not in N5_DTYPES:
            raise N5Error(f"expected an N5 dataType in {N5_DTYPES}, got {attrs['dataType']!r}")
        compression = attrs.get("compression")
        if compression is None:
            compression = {"type": attrs.get("compressionType", "raw")}
        dims = [int(d) for d in attrs["dimensions"]]
        block = [int(b) for b in attrs["blockSize"]]
        if len(dims) != len(block):
            raise N5Error(f"expected blockSize of {len(dims)} values, got {block}")
        return cls(
            path=path,
            shape=tuple(reversed(dims)),
            chunks=tuple(reversed(block)),
            dtype=np.dtype(attrs["dataType"]),
            compression=dict(compression),
            attrs=attrs,
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def resolution(self) -> tuple[float, ...] | None:
        """Voxel size in numpy order from ``resolution`` or ``pixelResolution`` (x-first)."""
        res = self.attrs.get("resolution")
        if res is None and isinstance(self.attrs.get("pixelResolution"), dict):
            res = self.attrs["pixelResolution"].get("dimensions")
        if res is None or len(res) != self.ndim:
            return None
        return tuple(float(r) for r in reversed(res))

    def resolution_unit(self) -> tuple[str | None, str]:
        """The unit of `resolution` (None when not stated) and the attribute it came from.

        ``resolution`` takes ``units`` (one per axis, as n5-viewer writes) or ``unit``;
        ``pixelResolution`` carries its own ``unit``.
        """
        if self.attrs.get("resolution") is not None:
            unit = self.attrs.get("units", self.attrs.get("unit"))
            if isinstance(unit, list):
                unit = unit[0] if unit and all(u == unit[0] for u in unit) else (str(unit) if unit else None)
            return (str(unit) if unit is not None else None), "resolution"
        pixel = self.attrs.get("pixelResolution")
        unit = pixel.get("unit") if isinstance(pixel, dict) else None
        return (str(unit) if unit is not None else None), "pixelResolution"

    def read_block(self, grid: tuple[int, ...]) -> np.ndarray | None:
        """The block at grid position ``grid`` (numpy order), or None if absent."""
        file = self.path.joinpath(*(str(i) for i in reversed(grid)))
        if not file.is_file():
            return None
        raw = file.read_bytes()
        mode, ndim = struct.unpack(">HH", raw[:4])
        if mode not in (0, 1):
            raise N5Error(f"expected N5 block mode 0 or 1, got {mode} in {file}")
        sizes = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        offset = 4 + 4 * ndim + (4 if mode == 1 else 0)
        data = _decompress(raw[offset:], self.compression)
        shape = tuple(reversed(sizes))
        count = math.prod(shape)
        values = np.frombuffer(data, dtype=self.dtype.newbyteorder(">"), count=count)
        return values.reshape(shape).astype(self.dtype)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """Read a box given as one slice (step 1) per axis."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        bounds = [s.indices(n)[:2] for s, n in zip(key, self.shape, strict=True)]
        out = np.zeros([max(b - a, 0) for a, b in bounds], dtype=self.dtype)
        if out.size == 0:
            return out
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in zip(bounds, self.chunks, strict=True)]
        for grid in np.ndindex(*(len(r) for r in ranges)):
            index = tuple(r[g] for r, g in zip(ranges, grid, strict=True))
            block = self.read_block(index)
            if block is None:
                continue
            src, dst = [], []
            for i, c, (a, b), n in zip(index, self.chunks, bounds, block.shape, strict=True):
                start = i * c
                lo, hi = max(a, start), min(b, start + n)
                src.append(slice(lo - start, hi - start))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = block[tuple(src)]
        return out
