"""Read a volume through a small cache of whole decoded chunks (on a worker, per run).

A block's read region is its write region grown by the model's context, so neighbouring
blocks read the same input chunks: with 64×64 blocks in 256×256 chunks every chunk was read
and decoded by up to 9 blocks, each through its own Zarr call (~1–2 ms of Zarr's own work
per call, whatever the size). `CachedVolume` reads each chunk whole, once, and cuts the
blocks' regions out of the chunks it holds (least recently used out, bounded in bytes).
The voxels are the ones `Volume.read` returns; a missing chunk raises the same
`MissingChunkError` (the chunk is read, and checked, through `Volume.read`).

Chunks larger than ``max_chunk_bytes`` are not cached: the volume is read as before.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from pipeline.geometry import Roi

MAX_BYTES = 64 << 20  # decoded chunks held per volume
MAX_CHUNK_BYTES = 4 << 20  # larger chunks are read per region, as without the cache


class CachedVolume:
    """A `Volume` (``read``, ``shape``, ``total_roi``, …) whose reads go through a chunk cache."""

    def __init__(self, volume: Any, max_bytes: int = MAX_BYTES, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.volume = volume
        self.chunk = tuple(int(c) for c in volume.chunks)
        self.max_bytes = max_bytes
        self.enabled = int(np.prod(self.chunk)) * volume.dtype.itemsize <= min(max_chunk_bytes, max_bytes)
        self._chunks: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.reads = 0  # chunks read from the store (for tests)

    def __getattr__(self, name: str) -> Any:  # shape, dtype, total_roi, url, … of the volume
        return getattr(self.__dict__["volume"], name)

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` (inside the volume), as (z, y, x): equal to ``volume.read(roi)``."""
        if not self.enabled:
            return self.volume.read(roi)
        if not self.volume.total_roi.contains(roi):
            raise ValueError(f"expected a ROI inside the volume {self.volume.total_roi}, got {roi}")
        begin, end = tuple(roi.begin), tuple(roi.end)
        out = np.empty(tuple(e - b for b, e in zip(begin, end)), dtype=self.volume.dtype)
        ranges = [range(b // c, -(-e // c)) for b, e, c in zip(begin, end, self.chunk)]
        for grid in itertools.product(*ranges):
            data = self._get(grid)
            start = [g * c for g, c in zip(grid, self.chunk)]
            lo = [max(b, s) for b, s in zip(begin, start)]
            hi = [min(e, s + n) for e, s, n in zip(end, start, data.shape)]
            out[tuple(slice(a - b, z - b) for a, z, b in zip(lo, hi, begin))] = data[
                tuple(slice(a - s, z - s) for a, z, s in zip(lo, hi, start))
            ]
        return out

    def _get(self, grid: tuple[int, ...]) -> np.ndarray:
        with self._lock:
            data = self._chunks.get(grid)
            if data is not None:
                self._chunks.move_to_end(grid)
                return data
        start = [g * c for g, c in zip(grid, self.chunk)]
        shape = [min(c, n - s) for c, n, s in zip(self.chunk, self.volume.shape, start)]
        data = self.volume.read(Roi(start, shape))  # outside the lock: a remote read may take a while
        with self._lock:
            self.reads += 1
            if grid not in self._chunks:
                self._chunks[grid] = data
                self._bytes += data.nbytes
            while self._bytes > self.max_bytes and len(self._chunks) > 1:
                _, old = self._chunks.popitem(last=False)
                self._bytes -= old.nbytes
        return data


__all__ = ["CachedVolume"]
