"""Whole chunks of a local Zarr v3 array, encoded and written in the calling thread.

``array[region] = data`` in zarr-python 3 runs every chunk through its event-loop thread and
two thread-pool hops (one to compress, one to write the file): about 0.7 ms per chunk on an
idle core, and 2–3 ms on a worker whose reader, model and writer threads share the GIL with
them (`bench/bench_chunkwrite.py`). A block's chunks are whole and owned by that block
alone, so nothing of zarr's read-modify-write machinery is needed: `ChunkWriter` takes the
array's own codecs (their synchronous ``_encode_sync``), its own chunk-key encoding, and
writes each chunk's file whole, as zarr's `LocalStore` does (a temporary file, then a rename:
`pipeline.markers.put_object`).
The bytes on disk equal zarr's own (tested for every codec it accepts).

Only what it can do exactly is accepted (`ChunkWriter.for_array` returns None otherwise, and
the caller keeps ``array[...] = ...``): a Zarr v3 array in a `LocalStore`, a regular chunk
grid, no sharding or array-to-array codec, codecs that encode synchronously, and
``write_empty_chunks`` on (every chunk is written, as `pipeline.output.DENSE` asks).
Remote stores keep zarr's path: there the network, not the hops, sets the pace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.geometry import Roi
from pipeline.markers import put_object


class ChunkWriter:
    """Writes chunk-aligned regions of one array (see the module docstring)."""

    def __init__(self, array: Any, root: Path) -> None:
        from zarr.core.buffer import default_buffer_prototype

        meta = array.metadata
        self._array_bytes = meta.codecs[0]
        self._bytes_bytes = tuple(meta.codecs[1:])
        self._prototype = default_buffer_prototype()
        self._spec = meta.get_chunk_spec((0,) * meta.ndim, array._async_array.config, self._prototype)
        self._meta = meta
        self.chunk_shape = tuple(int(c) for c in meta.chunk_grid.chunk_shape)
        self.shape = tuple(int(s) for s in meta.shape)
        self.dtype = np.dtype(meta.dtype.to_native_dtype())
        self.folder = root / array.path if array.path else root

    @classmethod
    def for_array(cls, array: Any) -> ChunkWriter | None:
        """A writer for ``array`` when it can write its chunks exactly; None otherwise."""
        try:
            from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec, SupportsSyncCodec
            from zarr.codecs.sharding import ShardingCodec
            from zarr.core.chunk_grids import RegularChunkGrid
            from zarr.storage import LocalStore
        except ImportError:  # another zarr-python: keep its own path
            return None
        meta = getattr(array, "metadata", None)
        if getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store, LocalStore):
            return None
        if not isinstance(meta.chunk_grid, RegularChunkGrid) or not array._async_array.config.write_empty_chunks:
            return None
        codecs = tuple(meta.codecs)
        if not codecs or not isinstance(codecs[0], ArrayBytesCodec) or isinstance(codecs[0], ShardingCodec):
            return None
        if not all(isinstance(c, BytesBytesCodec) for c in codecs[1:]):
            return None
        if not all(isinstance(c, SupportsSyncCodec) for c in codecs):
            return None
        return cls(array, Path(array.store.root))

    def chunk_path(self, chunk: tuple[int, ...]) -> Path:
        return self.folder / self._meta.encode_chunk_key(chunk)

    def encode(self, data: np.ndarray) -> bytes:
        """The stored bytes of one whole chunk (its codecs, in order)."""
        buffer: Any = self._prototype.nd_buffer.from_numpy_array(np.ascontiguousarray(data, dtype=self.dtype))
        buffer = self._array_bytes._encode_sync(buffer, self._spec)
        for codec in self._bytes_bytes:
            buffer = codec._encode_sync(buffer, self._spec)
        return buffer.to_bytes()

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` (the shape of ``roi``) into the chunks of ``roi``, which must be
        whole chunks (or reach the array's end)."""
        if tuple(data.shape) != tuple(roi.shape):
            raise ValueError(f"expected data of shape {tuple(roi.shape)} for {roi}, got {data.shape}")
        begin, end = tuple(roi.begin), tuple(roi.end)
        for b, e, c, n in zip(begin, end, self.chunk_shape, self.shape, strict=True):
            if b % c or (e % c and e != n) or b < 0 or e > n:
                raise ValueError(
                    f"expected a region of whole chunks {self.chunk_shape} inside {self.shape}, got {roi}"
                )
        grid = [range(b // c, -(-e // c)) for b, e, c in zip(begin, end, self.chunk_shape, strict=True)]
        for chunk in np.ndindex(*(len(g) for g in grid)):
            index = tuple(g[i] for g, i in zip(grid, chunk, strict=True))
            lo = [i * c for i, c in zip(index, self.chunk_shape, strict=True)]
            part = data[tuple(slice(low - b, min(low + c, e) - b)
                              for low, b, c, e in zip(lo, begin, self.chunk_shape, end, strict=True))]
            if part.shape != self.chunk_shape:  # an edge chunk: stored whole, padded with the fill value
                whole = np.full(self.chunk_shape, self._spec.fill_value, dtype=self.dtype)
                whole[tuple(slice(0, s) for s in part.shape)] = part
                part = whole
            put_object(None, str(self.chunk_path(index)), self.encode(part), remote=False)


@dataclass(frozen=True)
class ZarrWriter:
    """The same ``write(roi, data)`` through zarr's own ``array[...] = ...`` (any store)."""

    array: Any

    def write(self, roi: Roi, data: np.ndarray) -> None:
        self.array[roi.to_slices()] = data


def writer_for(array: Any) -> ChunkWriter | ZarrWriter:
    """A `ChunkWriter` for ``array`` where it can write its chunks exactly, else a `ZarrWriter`."""
    return ChunkWriter.for_array(array) or ZarrWriter(array)
