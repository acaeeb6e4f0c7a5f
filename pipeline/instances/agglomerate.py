"""Global agglomeration: merge fragments joined by an edge with score < t, for several t in
one pass, as a tree reduction over blocks in which no process holds all edges.

Level 0 is the block grid; a node of level L covers ``fanout³`` nodes of level L − 1 (a box
of blocks); the top node covers the volume. Every node, for every threshold::

    level 2            [                   top                   ]
    level 1      [  node (0,0)  ]   [  node (0,1)  ]   …         each reads only its children's
    level 0      [b0] [b1] [b2] [b3]   …                         face maps and pending edges

* **leaf (a block)**: union-find over the block's own edges with both ends in the block;
  writes its lookup table (fragment → root in the block); passes up its *face map* (each
  fragment on a face towards another block → its root, with the face bits) and its
  *pending* edges (root of the end in the block, fragment id of the end outside it).
* **node**: a pending edge whose outside end now lies in the node is resolved: that end
  is on its own block's face, so its root is in a child's face map; union-find over the
  children's roots; writes its lookup table (child root → node root, changed ones only);
  passes up the face entries that still face outside the node and the unresolved edges.

A block's final segment id is its fragment id sent through the lookup tables on its path
to the top (`pipeline.instances.relabel`). What a process holds is a node's face maps and
pending edges: they grow with the node's *surface*, not its volume; the top node holds the
most (face fragments of its children's shared faces).

What it decides across blocks: merging is single linkage over edge scores (connected
components of the edges below t), a global property computed exactly; the scores of an
edge are its full contact statistics (every contact pair is owned by one block, and
cross-face contacts are counted by the block that owns them). What it cannot decide across
blocks: the fragments themselves are cut at block faces (a cell is one fragment per block),
so a merge across a face needs an edge whose score is below t there; a cut whose contact
is a membrane stays split.
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


def _scores(job: InstanceJob, graph: dict[str, np.ndarray]) -> np.ndarray:
    if job.config.method == "components":  # touching foreground components always merge
        return np.zeros(graph["u"].size)
    score = graph[job.config.score]
    if "same_seed" in graph:  # pieces of one basin cut by a block face: always one segment
        score = np.where(graph["same_seed"], -1.0, score)
    return score


def leaf_task(job: InstanceJob, block_id: int) -> dict[str, Any]:
    """Level 0 of the tree for one block, every threshold → ``tree/t<k>/l0/<block>.npz``."""
    graph = job.get(f"graph/{block_id}.npz")
    u, v, score = graph["u"], graph["v"], _scores(job, graph)
    in_u = job.block_of_fragment(u) == block_id
    in_v = job.block_of_fragment(v) == block_id
    merges = []
    for k, t in enumerate(job.config.thresholds):
        below = score < t
        inner = below & in_u & in_v
        cross = below & (in_u != in_v)
        inside = np.where(in_u[cross], u[cross], v[cross])
        outside = np.where(in_u[cross], v[cross], u[cross])
        ids, roots = union_roots(np.concatenate([graph["face_ids"], inside]), u[inner], v[inner])
        changed = ids != roots
        face_roots = lookup(ids, roots, graph["face_ids"])
        job.put(
            f"tree/t{k}/l0/{block_id}.npz",
            lut_keys=ids[changed], lut_values=roots[changed],
            face_ids=graph["face_ids"], face_roots=face_roots, face_bits=graph["face_bits"],
            pend_root=lookup(ids, roots, inside), pend_out=outside.astype(np.uint64),
        )
        merges.append(int(changed.sum()))
    return {"block": block_id, "merges": merges}


def _still_facing_out(job: InstanceJob, tree: TreeGeometry, level: int, node: int,
                      ids: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Which face entries have a face whose neighbouring block lies outside ``node``."""
    if ids.size == 0:
        return np.zeros(0, dtype=bool)
    blocks = job.block_of_fragment(ids).astype(np.int64)
    index = np.stack(np.unravel_index(blocks, tree.grid_shape), axis=1)  # (n, 3)
    f = tree.fanout**level
    here = np.asarray(tree.index(level, node))
    out = np.zeros(ids.size, dtype=bool)
    for axis in range(3):
        for side, step in ((0, -1), (1, 1)):
            has = (bits & (1 << (2 * axis + side))) != 0
            neighbour = index[:, axis] + step
            out |= has & (neighbour // f != here[axis])
    return out


def node_task(job: InstanceJob, level: int, node: int) -> dict[str, Any]:
    """Level ≥ 1 of the tree for one node, every threshold → ``tree/t<k>/l<level>/<node>.npz``."""
    tree = TreeGeometry(job.grid.grid_shape, job.config.tree_fanout)
    children = tree.children(level, node)
    f = tree.fanout**level
    here = np.asarray(tree.index(level, node))
    merges = []
    for k in range(len(job.config.thresholds)):
        parts = [job.get(f"tree/t{k}/l{level - 1}/{c}.npz") for c in children]
        cat = lambda name: np.concatenate([p[name] for p in parts])  # noqa: E731
        face_ids, face_roots, face_bits = cat("face_ids"), cat("face_roots"), cat("face_bits")
        pend_root, pend_out = cat("pend_root"), cat("pend_out")
        order = np.argsort(face_ids)
        face_ids, face_roots, face_bits = face_ids[order], face_roots[order], face_bits[order]
        out_index = np.stack(np.unravel_index(job.block_of_fragment(pend_out).astype(np.int64), tree.grid_shape), axis=1)
        resolved = np.all(out_index // f == here, axis=1) if pend_out.size else np.zeros(0, dtype=bool)
        other = lookup(face_ids, face_roots, pend_out[resolved])
        ids, roots = union_roots(face_roots, pend_root[resolved], other)
        changed = ids != roots
        keep = _still_facing_out(job, tree, level, node, face_ids, face_bits)
        job.put(
            f"tree/t{k}/l{level}/{node}.npz",
            lut_keys=ids[changed], lut_values=roots[changed],
            face_ids=face_ids[keep], face_roots=lookup(ids, roots, face_roots[keep]), face_bits=face_bits[keep],
            pend_root=lookup(ids, roots, pend_root[~resolved]), pend_out=pend_out[~resolved],
        )
        merges.append(int(changed.sum()))
        if level == tree.levels and (~resolved).any():
            raise AssertionError(f"expected every edge resolved at the top of the tree, got {int((~resolved).sum())} pending")
    return {"level": level, "node": node, "merges": merges, "children": len(children)}


def path(tree: TreeGeometry, block_index: Coordinate | tuple[int, ...]) -> list[tuple[int, int]]:
    """(level, node) of every tree node above a block, bottom-up (level 0 = the block)."""
    return [(level, tree.ancestor(tuple(block_index), level)) for level in range(tree.levels + 1)]
