"""One pass of the pyramid: the regions of a level, the worker task that writes one, its markers.

A pass writes level k + 1 from level k (level 0 is the probability). Its tasks are
chunk-aligned regions of the target level; each reads the 2×-larger source region and
writes whole target chunks that no other task touches (zarr-python#3514)::

    level k      ┌───────────────────┬───────────────────┬─────────┐
    (source)     │  2 × region 0     │  2 × region 1     │ 2 × r 2 │  read by the task …
                 └───────────────────┴───────────────────┴─────────┘
    level k + 1  ┌─────────┬─────────┬────┐
    (target)     │ region 0│ region 1│ r 2│                           … that writes its chunks
                 └─────────┴─────────┴────┘   (the last region is clipped to the level)

A task carries addresses (URL, array paths, region id, offset, shape), never voxels. After
its chunks are written it leaves a marker in the output's ledger, under its own prefix::

    OUT.zarr/ledger/pyramid/<name>/<k>/pass                the level's geometry and region shape
    OUT.zarr/ledger/pyramid/<name>/<k>/done/<region id>   {"region": …, "time": …}
    OUT.zarr/ledger/pyramid/<name>/<k>/complete            the same geometry, once every region is done

One object per region is safe for concurrent writers on a file system or an object store,
as for the blocks (`pipeline.ledger`); a crash between the chunks and the marker only
repeats that region.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.markers import put_marker
from pipeline.urls import fsspec_filesystem, is_remote

REGION_VOXELS = 1 << 20  # target voxels per task at most (its source read is 4×: 16 MiB as float32)
MARKER_PREFIX = "ledger/pyramid"  # beside the blocks' ledger/done and ledger/failed


def region_shape(shape: Sequence[int], chunks: Sequence[int], budget: int = REGION_VOXELS) -> tuple[int, ...]:
    """Whole target chunks per task: ``chunks`` doubled in y and x, then z, while the region
    stays within ``budget`` voxels and smaller than the level. E.g. a (4, 300, 300) level of
    (1, 64, 64) chunks with a budget of 2**15 gets (1, 256, 128) regions."""
    region = [max(1, int(c)) for c in chunks]
    for axes in ((1, 2), (0,)):
        grew = True
        while grew:
            grew = False
            for axis in axes:
                if region[axis] < shape[axis] and math.prod(region) * 2 <= budget:
                    region[axis] *= 2
                    grew = True
    return tuple(region)


def region_grid(shape: Sequence[int], region: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-int(s) // int(r)) for s, r in zip(shape, region, strict=True))


def region_roi(region_id: int, shape: Sequence[int], region: Sequence[int]) -> tuple[list[int], list[int]]:
    """(offset, shape) of region ``region_id`` (C order over the region grid), clipped to ``shape``."""
    index = np.unravel_index(int(region_id), region_grid(shape, region))
    offset = [int(i) * int(r) for i, r in zip(index, region, strict=True)]
    size = [min(int(r), int(s) - o) for r, s, o in zip(region, shape, offset, strict=True)]
    return offset, size


def downsample_mean(block: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """2× mean in y and x (float32); an odd edge row/column averages the voxels that exist."""
    z, y, x = out_shape
    pad = [(0, 0), (0, 2 * y - block.shape[1]), (0, 2 * x - block.shape[2])]
    padded = np.pad(block.astype(np.float32), pad, mode="edge")
    return padded.reshape(z, y, 2, x, 2).mean(axis=(2, 4))


def stored(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The float32 means in the level's dtype (integers rounded to nearest)."""
    if np.issubdtype(dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(dtype)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RegionMarkers:
    """Done markers of the regions of one pyramid level (and its "complete" record)."""

    def __init__(self, output_url: str, name: str, level: int, storage_options: Mapping[str, Any] | None = None):
        self._remote = is_remote(str(output_url))
        self.fs, root = fsspec_filesystem(str(output_url), storage_options)
        self.root = f"{root.rstrip('/')}/{MARKER_PREFIX}/{name}/{int(level)}"

    def _put(self, key: str, payload: dict[str, Any]) -> None:
        put_marker(self.fs, key, payload, remote=self._remote)

    def mark_done(self, region_id: int, **info: Any) -> None:
        """Record that the region's chunks are written (call only after writing them)."""
        self._put(f"{self.root}/done/{int(region_id)}", {"region": int(region_id), "time": _now(), **info})

    def done(self) -> set[int]:
        """The ids of the regions marked done (one listing of the store)."""
        prefix = f"{self.root}/done"
        if self._remote:
            self.fs.invalidate_cache(prefix)
        try:
            keys = self.fs.find(prefix)
        except FileNotFoundError:
            return set()
        return {int(name) for name in (k.rsplit("/", 1)[-1] for k in keys) if name.isdigit()}

    def write_record(self, kind: str, geometry: dict[str, Any]) -> None:
        """``pass`` (written before a pass's tasks) or ``complete`` (after all of them)."""
        self._put(f"{self.root}/{kind}", {"time": _now(), **geometry})

    def record(self, kind: str) -> dict[str, Any] | None:
        """The ``kind`` record of the level without its time, or None (missing or unreadable)."""
        try:
            record = json.loads(self.fs.cat_file(f"{self.root}/{kind}"))
        except (FileNotFoundError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        record.pop("time", None)
        return record

    def reset(self) -> None:
        """Forget every marker of the level (its chunks stay)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


def write_region(job: dict[str, Any]) -> dict[str, Any]:
    """On a worker: read the 2× source region of ``job``, write its target chunks, mark it done.

    ``job``: ``url``, ``source`` and ``target`` (array paths in the group), ``name``,
    ``level``, ``region`` (id), ``offset`` and ``shape`` (of the target region), and
    optionally ``storage_options``.
    """
    from pipeline.chunkwrite import writer_for
    from pipeline.geometry import Roi
    from pipeline.output import DENSE, open_group

    options = job.get("storage_options")
    group = open_group(job["url"], "r+", options)
    source, target = group[job["source"]], group[job["target"]].with_config(DENSE)
    (z0, y0, x0), (nz, ny, nx) = job["offset"], job["shape"]
    data = np.asarray(source[z0 : z0 + nz, 2 * y0 : 2 * (y0 + ny), 2 * x0 : 2 * (x0 + nx)])
    mean = stored(downsample_mean(data, (nz, ny, nx)), target.dtype)
    writer_for(target).write(Roi((z0, y0, x0), (nz, ny, nx)), mean)  # whole chunks, written in this thread
    RegionMarkers(job["url"], job["name"], job["level"], options).mark_done(job["region"])
    return {"region": int(job["region"]), "voxels": int(nz * ny * nx)}


__all__ = ["REGION_VOXELS", "RegionMarkers", "downsample_mean", "region_grid", "region_roi", "region_shape", "write_region"]
