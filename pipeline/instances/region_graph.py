"""Region graph: for every pair of touching fragments, the contact size and the boundary
probability along the contact; every edge owned by exactly one block.

A voxel pair (lo, hi) adjacent along one axis is owned by the block that holds ``hi``. A
block therefore reads its fragments grown by one voxel on its *low* faces only::

    lower neighbour │ this block's write ROI
                  ░░│██████████████████
                  ░░│██████████████████      ░ = one voxel of the neighbour (read, not owned)
    pairs:        ░─█  █─█  █─█ …            each pair counted once, by the block of its hi voxel

Per contact pair the boundary value is ``(b_lo + b_hi) / 2`` with ``b = 1 − p``. Per edge
``(u < v)``: ``count`` (contact size in voxel faces), ``mean`` and the ``quantile`` (lower
order statistic) of those values. Pairs where either side is 0 (background in the
"components" method) are not edges.

Each edge also carries the *basins* of its ends (``a``, ``b``): the seed key shared by all
pieces of one watershed basin that block faces cut apart. The agglomeration decides on
basin pairs, with the statistics summed over every block that holds a piece of the pair.

The block also lists its *face fragments*: ids on a face that has a neighbouring block,
with a bit per face (bit 2·axis for the low face, 2·axis + 1 for the high one); the
agglomeration tree (`pipeline.instances.agglomerate`) uses them to know which fragments
can still merge outside a group of blocks. All of it goes to ``instances/graph/<block>.npz``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.geometry import Roi

from .layout import FRAGMENTS, InstanceJob

__all__ = ["aggregate_edges", "contact_pairs", "face_fragments", "graph_task"]

EMPTY_U64 = np.zeros(0, dtype=np.uint64)


def contact_pairs(frag: np.ndarray, boundary: np.ndarray, margin: tuple[int, int, int],
                  axes: tuple[int, ...] = (0, 1, 2)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, value) of every owned contact pair along ``axes``, u < v (uint64, uint64, float64).

    ``frag``, ``boundary``: (z, y, x) arrays of the write ROI grown by ``margin`` (0 or 1)
    voxels on the low side of each axis.
    """
    us, vs, vals = [], [], []
    for axis in axes:
        sl = [slice(m, None) for m in margin]  # the write ROI on the other axes
        sl[axis] = slice(None)
        f, b = frag[tuple(sl)], boundary[tuple(sl)]
        if f.shape[axis] < 2:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        fa, fb = f[tuple(lo)], f[tuple(hi)]
        touch = (fa != fb) & (fa != 0) & (fb != 0)
        if not touch.any():
            continue
        a, c = fa[touch], fb[touch]
        us.append(np.minimum(a, c))
        vs.append(np.maximum(a, c))
        vals.append((b[tuple(lo)][touch].astype(np.float64) + b[tuple(hi)][touch]) / 2.0)
    if not us:
        return EMPTY_U64, EMPTY_U64, np.zeros(0)
    return np.concatenate(us).astype(np.uint64), np.concatenate(vs).astype(np.uint64), np.concatenate(vals)


def aggregate_edges(u: np.ndarray, v: np.ndarray, values: np.ndarray, quantile: float) -> dict[str, np.ndarray]:
    """Per distinct (u, v): count, mean and the lower ``quantile`` order statistic of ``values``."""
    if u.size == 0:
        return {"u": EMPTY_U64, "v": EMPTY_U64, "count": np.zeros(0, np.int64), "mean": np.zeros(0), "quantile": np.zeros(0)}
    order = np.lexsort((values, v, u))
    u, v, values = u[order], v[order], values[order]
    new = np.ones(u.size, dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    starts = np.flatnonzero(new)
    count = np.diff(np.append(starts, u.size)).astype(np.int64)
    mean = np.add.reduceat(values, starts) / count
    qidx = starts + np.floor(quantile * (count - 1)).astype(np.int64)
    return {"u": u[starts], "v": v[starts], "count": count, "mean": mean, "quantile": values[qidx]}


def face_fragments(frag: np.ndarray, faces: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, bits): fragments on the given ``(axis, side)`` faces of a (z, y, x) block."""
    ids, bits = [], []
    for axis, side in faces:
        sl = [slice(None)] * 3
        sl[axis] = slice(0, 1) if side == 0 else slice(-1, None)
        found = np.unique(frag[tuple(sl)])
        found = found[found != 0]
        ids.append(found)
        bits.append(np.full(found.size, 1 << (2 * axis + side), dtype=np.int64))
    if not ids:
        return EMPTY_U64, np.zeros(0, np.int64)
    all_ids, all_bits = np.concatenate(ids).astype(np.uint64), np.concatenate(bits)
    order = np.argsort(all_ids, kind="stable")
    all_ids, all_bits = all_ids[order], all_bits[order]
    if all_ids.size == 0:
        return EMPTY_U64, np.zeros(0, np.int64)
    new = np.ones(all_ids.size, dtype=bool)
    new[1:] = all_ids[1:] != all_ids[:-1]
    starts = np.flatnonzero(new)
    return all_ids[starts], np.bitwise_or.reduceat(all_bits, starts)


FLAG = np.uint64(1 << 63)  # basin id of a fragment without a seed: its own id with this bit


def basins(job: InstanceJob, ids: np.ndarray) -> np.ndarray:
    """The watershed basin of each fragment: its seed key (the same in every block that cut a
    piece of it), or ``id | FLAG`` for a fragment without one (`pipeline.instances.fragments`)."""
    ids = np.asarray(ids, dtype=np.uint64)
    out = ids | FLAG
    if job.config.method != "watershed" or ids.size == 0:
        return out
    blocks = job.block_of_fragment(ids)
    for block in np.unique(blocks):
        table = job.get(f"seeds/{int(block)}.npz")
        if not table["ids"].size:
            continue
        mine = blocks == block
        keys = table["keys"][(ids[mine] - table["ids"][0]).astype(np.int64)]
        out[mine] = np.where(keys != 0, keys, out[mine])
    return out


def graph_task(job: InstanceJob, block_id: int) -> dict[str, Any]:
    """Edges owned by one block and its face fragments → ``instances/graph/<block>.npz``."""
    block = job.block(block_id)
    write = block.write_roi
    total = job.grid.total_roi
    margin = tuple(1 if b > 0 else 0 for b in write.begin)
    grown = Roi(write.begin - margin, write.shape + margin)  # low faces only
    group = job.group("r")
    frag = np.asarray(group[FRAGMENTS][grown.to_slices()])  # (z, y, x) uint64
    boundary = np.float32(1) - job.read_probability(grown)
    axes = (1, 2) if job.mode == "2d" and not job.config.link_z else (0, 1, 2)
    u, v, values = contact_pairs(frag, boundary, margin, axes)  # type: ignore[arg-type]
    edges = aggregate_edges(u, v, values, job.config.quantile)
    edges["a"], edges["b"] = basins(job, edges["u"]), basins(job, edges["v"])
    inner = frag[tuple(slice(m, None) for m in margin)]
    faces = [(a, s) for a in axes for s in (0, 1)
             if (s == 0 and write.begin[a] > 0) or (s == 1 and write.end[a] < total.end[a])]
    face_ids, face_bits = face_fragments(inner, faces)
    job.put(f"graph/{block_id}.npz", **edges, face_ids=face_ids, face_bits=face_bits)
    return {"block": block_id, "edges": int(edges["u"].size), "face_fragments": int(face_ids.size)}
