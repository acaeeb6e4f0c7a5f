"""Relabel: fragments → segments, blockwise on the workers, through the agglomeration tree.

A block's segment ids come from its fragments' basins sent through the lookup tables on
its path to the top of the tree (`pipeline.instances.agglomerate`), for one threshold::

    fragments ─► basins ─► lut(level 0: the block) ─► lut(level 1 node) ─► … ─► lut(top) ─► neuron_ids

Each table maps only the ids that changed at that level; others pass through. A segment's
id is the smallest basin id in it (uint64: a seed key, or a fragment id with the top bit
set), the same whichever block computes it, so ``neuron_ids`` agree across block faces. `segment_lookup` gives the fragment → segment table
of any fragment ids (e.g. to pick another threshold later without recomputing anything).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .agglomerate import TreeGeometry, lookup, path
from .layout import FRAGMENTS, NEURON_IDS, InstanceJob
from .region_graph import basins

__all__ = ["relabel_task", "segment_lookup"]


def _tables(job: InstanceJob, block_id: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    tree = TreeGeometry(job.grid.grid_shape, job.config.tree_fanout)
    index = job.grid.block_index(block_id)
    out = []
    for level, node in path(tree, index):
        part = job.get(f"tree/t{k}/l{level}/{node}.npz")
        out.append((part["lut_keys"], part["lut_values"]))
    return out


def _apply(tables: list[tuple[np.ndarray, np.ndarray]], ids: np.ndarray) -> np.ndarray:
    out = np.asarray(ids, dtype=np.uint64)
    for keys, values in tables:
        order = np.argsort(keys)
        out = lookup(keys[order], values[order], out)
    return out


def segment_lookup(job: InstanceJob, block_id: int, k: int, fragment_ids: np.ndarray) -> np.ndarray:
    """Segment ids (uint64) of fragments of block ``block_id`` at threshold index ``k``."""
    return _apply(_tables(job, block_id, k), basins(job, fragment_ids))


def relabel_task(job: InstanceJob, block_id: int, k: int | None = None) -> dict[str, Any]:
    """Write ``neuron_ids`` of one block (whole chunks) at threshold index ``k`` (default: config's)."""
    import fastremap

    k = job.config.labels_index if k is None else int(k)
    roi = job.block(block_id).write_roi
    group = job.group("r+")
    frag = np.asarray(group[FRAGMENTS][roi.to_slices()])  # (z, y, x) uint64
    ids, counts = fastremap.unique(frag, return_counts=True)
    segments = _apply(_tables(job, block_id, k), basins(job, ids))
    segments[ids == 0] = 0  # background (method "components") stays 0
    mapping = {int(a): int(b) for a, b in zip(ids, segments, strict=True) if a != b}
    labels = fastremap.remap(frag, mapping, preserve_missing_labels=True, in_place=False) if mapping else frag
    group[NEURON_IDS][roi.to_slices()] = labels.astype(np.uint64, copy=False)
    return {"block": block_id, "segments": segments[segments > 0], "counts": counts[segments > 0]}
