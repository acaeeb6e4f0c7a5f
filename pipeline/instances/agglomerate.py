"""Global agglomeration: merge watershed basins whose edge scores below t, for several t in
one pass, as a tree reduction over blocks in which no process holds all edges.

An edge is a pair of *basins* (`pipeline.instances.region_graph.basins`: the pieces of one
watershed basin cut apart by block faces share its seed key), scored with the contact
statistics summed over every block that holds a piece of the pair. That is the edge the
whole-volume watershed would see, so a decision does not depend on where blocks cut.

A pair can only get contributions from blocks whose read ROI contains one of its seeds
(or, for a basin without a seed, its block and the next one along each axis): its *box* of
blocks, known from the keys alone. Level 0 of the tree is the block grid; a node of level
L covers ``fanout³`` nodes of level L − 1; the top node covers the volume::

    level 2            [                   top                   ]
    level 1      [  node (0,0)  ]   [  node (0,1)  ]   …        each reads only its children's
    level 0      [b0] [b1] [b2] [b3]   …                        pending edges and open maps

For every node and threshold: edges whose box lies inside the node are *complete* (every
contribution has been summed) and are decided (union-find, merge if mean < t); the others
stay *pending* and go up with their sums, together with the *open map* (basin → its root
here) of the basins they touch. A node first unites, in each basin, the roots its children
gave it (one basin, many blocks), then decides. It writes a lookup table (representative →
root); a block's segment id is its fragments' basins sent through the tables on its path
(`pipeline.instances.relabel`). What a task holds grows with its node's surface (edges
within one context of its faces), not its volume; the top node holds the most.

What it decides across blocks: exactly the whole-volume decision on every basin pair, for
basins both watersheds agree on. What it cannot: where two blocks flood the same region
from different seeds (a seed only one of them sees), the pieces are different basins and
their contact is an edge of its own, usually through cell interior (it merges).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.geometry import Coordinate

from .layout import InstanceJob

__all__ = ["TreeGeometry", "leaf_task", "node_task", "union_roots"]

EMPTY = np.zeros(0, dtype=np.uint64)


class TreeGeometry:
    """Levels and nodes of the reduction tree over a block grid (pure arithmetic)."""

    def __init__(self, grid_shape: tuple[int, ...], fanout: int = 2):
        self.grid_shape = tuple(int(g) for g in grid_shape)
        self.fanout = int(fanout)
        levels, span = 0, 1
        while span < max(self.grid_shape):  # the top node covers the whole grid
            levels, span = levels + 1, span * self.fanout
        self.levels = levels

    def shape(self, level: int) -> tuple[int, ...]:
        f = self.fanout**level
        return tuple(-(-g // f) for g in self.grid_shape)

    def count(self, level: int) -> int:
        return math.prod(self.shape(level))

    def index(self, level: int, node: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(node, self.shape(level)))

    def node(self, level: int, index: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.shape(level)))

    def children(self, level: int, node: int) -> list[int]:
        """Nodes of level − 1 under ``node`` of ``level`` (level ≥ 1)."""
        index, below = self.index(level, node), self.shape(level - 1)
        ranges = [range(i * self.fanout, min((i + 1) * self.fanout, n)) for i, n in zip(index, below, strict=True)]
        return [self.node(level - 1, c) for c in itertools.product(*ranges)]

    def ancestor(self, block_index: tuple[int, ...], level: int) -> int:
        f = self.fanout**level
        return self.node(level, tuple(i // f for i in block_index))


def union_roots(nodes: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find of ``nodes`` (uint64, plus the ends of the edges u–v): (ids, root = min id)."""
    ids = np.unique(np.concatenate([nodes, u, v]).astype(np.uint64))
    if ids.size == 0:
        return EMPTY, EMPTY
    iu, iv = np.searchsorted(ids, u), np.searchsorted(ids, v)
    graph = coo_matrix((np.ones(iu.size, dtype=np.int8), (iu, iv)), shape=(ids.size, ids.size))
    _, comp = connected_components(graph, directed=False)
    root_of_comp = np.full(comp.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(root_of_comp, comp, ids)  # ids are sorted: the min is the first one
    return ids, root_of_comp[comp]


def lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query`` for queries among the sorted ``keys``; others unchanged."""
    query = np.asarray(query, dtype=np.uint64)
    if keys.size == 0 or query.size == 0:
        return query.copy()
    pos = np.clip(np.searchsorted(keys, query), 0, keys.size - 1)
    hit = keys[pos] == query
    return np.where(hit, values[pos], query)


def _scores(job: InstanceJob, count: np.ndarray, total: np.ndarray) -> np.ndarray:
    if job.config.method == "components":  # touching foreground components always merge
        return np.zeros(count.size)
    return total / np.maximum(count, 1)


def basin_box(job: InstanceJob, basin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): inclusive block-grid ranges, (n, 3) each, of the blocks that can hold a piece."""
    from .region_graph import FLAG

    grid = np.asarray(job.grid.grid_shape)
    bs, ctx = np.asarray(job.block_shape), np.asarray(job.context)
    seeded = (basin & FLAG) == 0
    pos = np.stack(np.unravel_index(np.where(seeded, basin - np.uint64(1), 0).astype(np.int64), job.shape), axis=1)
    lo = np.where(seeded[:, None], np.maximum(0, (pos - ctx) // bs), 0)
    hi = np.where(seeded[:, None], np.minimum(grid - 1, (pos + ctx) // bs), 0)
    own = job.block_of_fragment(basin & ~FLAG).astype(np.int64)
    idx = np.stack(np.unravel_index(np.where(seeded, 0, own), job.grid.grid_shape), axis=1)
    lo = np.where(seeded[:, None], lo, idx)
    hi = np.where(seeded[:, None], hi, np.minimum(grid - 1, idx + 1))
    return lo, hi


def _merge_edges(a: np.ndarray, b: np.ndarray, count: np.ndarray, total: np.ndarray):
    """Sum the statistics of equal basin pairs (a < b)."""
    if a.size == 0:
        return a, b, count, total
    pairs, inverse = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return (pairs[:, 0], pairs[:, 1], np.bincount(inverse, weights=count, minlength=len(pairs)),
            np.bincount(inverse, weights=total, minlength=len(pairs)))


def _complete(job: InstanceJob, a: np.ndarray, b: np.ndarray, lo_node: np.ndarray, hi_node: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return np.zeros(0, dtype=bool)
    (la, ha), (lb, hb) = basin_box(job, a), basin_box(job, b)
    lo, hi = np.minimum(la, lb), np.maximum(ha, hb)
    return np.all((lo >= lo_node) & (hi <= hi_node), axis=1)


def _decide(job: InstanceJob, name: str, a, b, count, total, lo_node, hi_node, present: np.ndarray,
            open_basin: list[np.ndarray], open_root: list[np.ndarray]) -> dict[str, Any]:
    """Sum, decide the complete edges for every threshold, write ``tree/…/<name>.npz``.

    ``present``: the basins seen below this node; those that may have pieces outside it
    (box not inside) stay *open*, with the endpoints of pending edges: their roots go up,
    so every piece of a basin ends in one segment. ``open_basin``/``open_root``: the
    children's open maps, per threshold.
    """
    a, b, count, total = _merge_edges(a, b, count, total)
    done = _complete(job, a, b, lo_node, hi_node)
    score = _scores(job, count, total)
    pa, pb = a[~done], b[~done]
    job.put(f"tree/e/{name}.npz", a=pa, b=pb, count=count[~done], total=total[~done])
    present = np.unique(present)
    blo, bhi = basin_box(job, present)
    outside = ~np.all((blo >= lo_node) & (bhi <= hi_node), axis=1) if present.size else np.zeros(0, dtype=bool)
    touched = np.unique(np.concatenate([pa, pb, present[outside]]))
    merges = []
    for k, t in enumerate(job.config.thresholds):
        take = done & (score < t)
        keep = open_basin[k] if open_basin else EMPTY
        rkeep = open_root[k] if open_root else EMPTY
        ids, roots = union_roots(np.concatenate([keep, rkeep, touched]), np.concatenate([a[take], keep]),
                                 np.concatenate([b[take], rkeep]))
        changed = ids != roots
        job.put(f"tree/t{k}/{name}.npz", lut_keys=ids[changed], lut_values=roots[changed],
                open_basin=touched, open_root=lookup(ids, roots, touched))
        merges.append(int(take.sum()))
    return {"merges": merges, "pending": int(pa.size), "decided": int(done.sum()), "open": int(touched.size)}


def leaf_task(job: InstanceJob, block_id: int) -> dict[str, Any]:
    """Level 0 of the tree for one block, every threshold → ``tree/…/l0/<block>.npz``."""
    graph = job.get(f"graph/{block_id}.npz")
    a, b = np.minimum(graph["a"], graph["b"]), np.maximum(graph["a"], graph["b"])
    other = a != b  # pieces of one basin touching: one basin already
    count = graph["count"].astype(np.float64)
    total = count * graph["quantile" if job.config.score == "quantile" else "mean"]
    here = np.asarray(job.grid.block_index(block_id))
    out = _decide(job, f"l0/{block_id}", a[other], b[other], count[other], total[other], here, here,
                  np.concatenate([graph["a"], graph["b"]]), [], [])
    return {"block": block_id, **out}


def node_task(job: InstanceJob, level: int, node: int) -> dict[str, Any]:
    """Level ≥ 1 of the tree for one node, every threshold → ``tree/…/l<level>/<node>.npz``."""
    tree = TreeGeometry(job.grid.grid_shape, job.config.tree_fanout)
    children = tree.children(level, node)
    f = tree.fanout**level
    lo = np.asarray(tree.index(level, node)) * f
    hi = np.minimum(lo + f, np.asarray(job.grid.grid_shape)) - 1
    edges = [job.get(f"tree/e/l{level - 1}/{c}.npz") for c in children]
    cat = lambda parts, name: np.concatenate([p[name] for p in parts])  # noqa: E731
    opened = [[job.get(f"tree/t{k}/l{level - 1}/{c}.npz") for c in children] for k in range(len(job.config.thresholds))]
    out = _decide(job, f"l{level}/{node}", cat(edges, "a"), cat(edges, "b"), cat(edges, "count"), cat(edges, "total"),
                  lo, hi, cat(opened[0], "open_basin"), [cat(o, "open_basin") for o in opened],
                  [cat(o, "open_root") for o in opened])
    if level == tree.levels and out["pending"]:
        raise AssertionError(f"expected every edge decided at the top of the tree, got {out['pending']} pending")
    return {"level": level, "node": node, "children": len(children), **out}


def path(tree: TreeGeometry, block_index: Coordinate | tuple[int, ...]) -> list[tuple[int, int]]:
    """(level, node) of every tree node above a block, bottom-up (level 0 = the block)."""
    return [(level, tree.ancestor(tuple(block_index), level)) for level in range(tree.levels + 1)]
