"""A cheap fingerprint of an input volume, so that ``--resume`` notices a replaced input.

A resumed run continues blocks of an output started earlier; if the input at the same URL
was replaced meanwhile (re-imported, re-aligned, another crop of the same shape), old and
new blocks would mix without a word. The fingerprint is stored in the output's provenance
and compared on resume:

* the array's metadata: shape, dtype, stored axes, chunks and shards, multiscale level;
* the SHA-256 of the decoded values of each of `SAMPLES` chunks spread evenly over the
  chunk grid (first and last included), so re-written data is noticed without reading it
  all. A sampled chunk that cannot be read (corrupt, missing) is left out: its blocks fail
  on their own, and once it is repaired a resume must not be refused for it; on resume
  only the chunks hashed at the start are compared, each if it reads now.

Reading ``SAMPLES`` chunks costs a few requests at any scale; a change confined to chunks
outside the sample goes unnoticed (documented in docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

SAMPLES = 8  # chunks hashed


def _sample_chunks(grid: tuple[int, ...], samples: int) -> list[tuple[int, ...]]:
    total = math.prod(grid)
    picks = sorted({int(round(i * (total - 1) / max(samples - 1, 1))) for i in range(min(samples, total))})
    return [tuple(int(c) for c in np.unravel_index(p, grid)) for p in picks]


def read_sample(volume: Any, samples: int = SAMPLES, only: list[str] | None = None) -> dict[str, np.ndarray | None]:
    """The decoded values of `samples` chunks spread over the grid, by index ("z,y,x");
    None for a chunk that cannot be read now. ``only``: these indices instead."""
    from pipeline.geometry import Roi

    grid = tuple(-(-s // c) for s, c in zip(volume.shape, volume.chunks, strict=True))
    indices = [tuple(int(v) for v in k.split(",")) for k in only] if only is not None else _sample_chunks(grid, samples)
    indices = [i for i in indices if len(i) == len(grid) and all(0 <= a < g for a, g in zip(i, grid))]

    def read(index: tuple[int, ...]) -> np.ndarray | None:
        offset = tuple(i * c for i, c in zip(index, volume.chunks, strict=True))
        shape = tuple(min(c, s - o) for c, s, o in zip(volume.chunks, volume.shape, offset, strict=True))
        try:
            return np.ascontiguousarray(volume.read(Roi(offset, shape)))
        except Exception:  # corrupt or missing: that block reports it; nothing to compare here
            return None

    with ThreadPoolExecutor(max_workers=max(1, len(indices))) as pool:  # one round trip, not 8, on object stores
        return {",".join(map(str, i)): data for i, data in zip(indices, pool.map(read, indices))}


def _sha256(data: np.ndarray) -> str:
    h = hashlib.sha256(f"{data.dtype.str}|{data.shape}|".encode())
    h.update(data.tobytes())
    return h.hexdigest()


def input_fingerprint(volume: Any, sample: dict[str, np.ndarray | None] | None = None) -> dict[str, Any]:
    """The fingerprint of an opened `pipeline.volume.Volume` (JSON-ready), from
    ``sample`` (`read_sample`, read here if not given)."""
    sample = read_sample(volume) if sample is None else sample
    return {
        "shape": list(volume.shape),
        "dtype": volume.dtype.name,
        "axes": list(volume.axes),
        "chunks": list(volume.chunks),
        "shards": list(volume.shards) if volume.shards else None,
        "level": volume.level,
        "chunk_sha256": {k: _sha256(v) for k, v in sample.items() if v is not None},
    }


def fingerprint_changes(stored: dict[str, Any] | None, volume: Any) -> list[str]:
    """What differs between a stored fingerprint and the volume now (empty: the same input)."""
    if not stored:
        return []  # an output from before fingerprints: nothing to compare
    before = dict(stored.get("chunk_sha256") or {})
    now = input_fingerprint(volume, read_sample(volume, only=list(before)))
    diffs = [
        f"input {key}: stored {stored.get(key)!r}, now {now.get(key)!r}"
        for key in sorted((set(stored) | set(now)) - {"chunk_sha256"})
        if stored.get(key) != now.get(key)
    ]
    changed = [k for k, v in now["chunk_sha256"].items() if before.get(k) != v]
    if changed:
        diffs.append(f"input values of chunk(s) {', '.join(f'({k})' for k in changed[:4])} differ")
    return diffs


__all__ = ["SAMPLES", "fingerprint_changes", "input_fingerprint", "read_sample"]
