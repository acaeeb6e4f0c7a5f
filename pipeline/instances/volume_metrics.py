"""Metrics of label volumes larger than memory, from tables accumulated over blocks on Dask.

**3D scores** come from one sparse contingency table ``c[g, s]`` (voxels with ground-truth
label g and segment s, GT background 0 ignored), a sum over blocks::

    block 0 ─► (g, s, count) ─┐
    block 1 ─► (g, s, count) ─┼─► merge (sum equal pairs) ─┐
    …                         …                             ├─► … ─► one table ─► scores
    block n ─► (g, s, count) ─┘                             ┘     (tree of fan-in 8 on Dask)

With ``n = Σ c``, ``a_g = Σ_s c``, ``b_s = Σ_g c`` (log base 2, bits, as scikit-image and CREMI):

* VI split ``H(S|G) = −Σ c/n · log(c / a_g)``, VI merge ``H(G|S) = −Σ c/n · log(c / b_s)``
  (`skimage.metrics.variation_of_information(gt, seg, ignore_labels=[0])` returns
  (merge, split));
* adapted Rand error (CREMI / scikit-image): ``1 − 2·(Σc² − n) / ((Σa² − n) + (Σb² − n))``;
* CREMI score ``√(ARAND · (VI split + VI merge))``.

**ISBI 2012 scores of a label proposal** (`isbi_labels`), slice by slice: GT segments = 4-
connected components of ``GT > 0``; the proposal's labels are its segments as they are
(0 = boundary: singletons), no threshold. V_rand and V_info are per-slice F-scores
averaged over *all* slices (macro: each task returns its per-slice values, the mean is
taken once at the end); the 2012 Rand error sums pair counts over all slices first
(micro). Same definitions as `pipeline.metrics` (its thinned V_rand for a binary map is
the label score of its thinned segmentation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.geometry import Roi
from pipeline.plan import BlockGrid

__all__ = ["LabelSource", "contingency", "isbi_labels", "scores_from_table", "volume_scores"]

FAN_IN = 8


@dataclass(frozen=True)
class LabelSource:
    """A Zarr label array by address (``store`` URL, ``path`` inside it): what tasks carry."""

    store: str
    path: str = ""

    def __post_init__(self) -> None:
        from pipeline.volume import is_remote, local_path

        if not is_remote(self.store):  # read on workers whose working directory may differ
            object.__setattr__(self, "store", os.path.abspath(local_path(self.store)))

    def open(self) -> Any:
        import zarr

        return zarr.open_array(store=self.store, path=self.path, mode="r")

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.open()[slices])


Labels = LabelSource | np.ndarray


def _read(src: Labels, slices: tuple[slice, ...]) -> np.ndarray:
    return src.read(slices) if isinstance(src, LabelSource) else np.asarray(src[slices])


def _shape_dtype(src: Labels) -> tuple[tuple[int, ...], np.dtype]:
    arr = src.open() if isinstance(src, LabelSource) else np.asarray(src)
    return tuple(arr.shape), np.dtype(arr.dtype)


def check_pair(seg: Labels, gt: Labels) -> tuple[int, ...]:
    """Shapes equal and both integer label arrays ("expected X, got Y" otherwise)."""
    (s_shape, s_dtype), (g_shape, g_dtype) = _shape_dtype(seg), _shape_dtype(gt)
    for name, dtype in (("SEG", s_dtype), ("GT", g_dtype)):
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise ValueError(f"expected {name} as an integer label array, got dtype {dtype}; "
                             "score a probability map with `emunet evaluate` without --segmentation")
    if s_shape != g_shape:
        raise ValueError(f"expected SEG and GT of the same shape, got SEG {s_shape} and GT {g_shape}")
    return s_shape


# --------------------------------------------------------------------------- 3D table


def table_block(seg: Labels, gt: Labels, slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt ids, seg ids, counts) of one block, GT background 0 dropped (uint64, uint64, int64)."""
    s = _read(seg, slices)
    g = _read(gt, slices)
    if np.issubdtype(g.dtype, np.signedinteger) and g.size and g.min() < 0:
        raise ValueError(f"expected GT labels ≥ 0, got minimum {g.min()}")
    keep = g != 0
    return _sum_pairs(g[keep], s[keep], None)


def _sum_pairs(g: np.ndarray, s: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal (g, s) pairs summed (``c`` None: each pair counts 1), sorted by (g, s).

    The ids of each side are renumbered to 0…n−1 first, so a pair is one int64 key
    (``gi · n_s + si``) and one 1-D sort counts them: several times faster and leaner than
    sorting rows of two columns.
    """
    g = g.astype(np.uint64, copy=False).ravel()
    s = s.astype(np.uint64, copy=False).ravel()
    if g.size == 0:
        return g, s, np.zeros(0, dtype=np.int64)
    import fastremap  # unique: bincount for dense ids, else a sort; 3-20× numpy's (measured, 8 Mvoxel)

    g_ids, gi = fastremap.unique(g, return_inverse=True)
    s_ids, si = fastremap.unique(s, return_inverse=True)
    n_s = len(s_ids)
    key = gi.astype(np.int64, copy=False) * n_s + si.astype(np.int64, copy=False)  # < n² ≤ 2⁶³ for any table below 3·10⁹ entries
    if c is None:
        keys, counts = fastremap.unique(key, return_counts=True)
    else:
        keys, inverse = fastremap.unique(key, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=c, minlength=len(keys))
    return g_ids[keys // n_s], s_ids[keys % n_s], counts.astype(np.int64)


def merge_tables(tables: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum sparse tables: equal (g, s) pairs added."""
    g = np.concatenate([t[0] for t in tables])
    s = np.concatenate([t[1] for t in tables])
    return _sum_pairs(g, s, np.concatenate([t[2] for t in tables]).astype(np.float64))


BLOCK_VOXELS = 1 << 21  # ~2 Mvoxel a task: a leaf's peak (two uint64 blocks + renumbered copies) ≈ 150 MB


def default_block(seg: Labels, shape: Sequence[int]) -> tuple[int, ...]:
    """Whole chunks (shards) of ``seg`` stacked along the first axis up to ~`BLOCK_VOXELS`, else 8×512×512.

    Chunk-aligned, so each task reads every chunk it touches once; small, so a task's memory
    does not depend on the volume (the table tree holds only tables, never voxels).
    """
    unit: tuple[int, ...] = (8, 512, 512)[-len(shape):]
    if isinstance(seg, LabelSource):
        arr = seg.open()
        unit = tuple(int(v) for v in (getattr(arr, "shards", None) or arr.chunks))
    unit = tuple(min(int(s), u) for s, u in zip(shape, unit, strict=True))
    stack = max(1, BLOCK_VOXELS // max(1, math.prod(unit)))
    return (min(int(shape[0]), unit[0] * stack), *unit[1:])


def contingency(seg: Labels, gt: Labels, *, block_shape: Sequence[int] | None = None, client: Any = None):
    """The sparse contingency table (gt, seg, count) of two label volumes, over blocks."""
    shape = check_pair(seg, gt)
    block = tuple(block_shape or default_block(seg, shape))
    grid = BlockGrid(shape, block, (0,) * len(shape), (0,) * len(shape))  # type: ignore[arg-type]
    slices = [grid.block(b).write_roi.to_slices() for b in grid.block_ids()]
    if client is None:
        tables = [table_block(seg, gt, sl) for sl in slices]
        while len(tables) > 1:
            tables = [merge_tables(tables[i : i + FAN_IN]) for i in range(0, len(tables), FAN_IN)]
        return tables[0]
    futures = client.map(table_block, [seg] * len(slices), [gt] * len(slices), slices, pure=False)
    while len(futures) > 1:  # the tree: no process ever holds more than FAN_IN tables
        futures = [client.submit(lambda *t: merge_tables(t), *futures[i : i + FAN_IN], pure=False)
                   for i in range(0, len(futures), FAN_IN)]
    return futures[0].result()


def scores_from_table(g: np.ndarray, s: np.ndarray, c: np.ndarray) -> dict[str, float]:
    """VI split/merge, adapted Rand error and CREMI score of a table (see module docstring)."""
    if c.sum() == 0:
        raise ValueError("expected ground truth with some labelled (non-zero) voxels, got none")
    c = c.astype(np.float64)
    n = c.sum()
    _, gi = np.unique(g, return_inverse=True)
    _, si = np.unique(s, return_inverse=True)
    a = np.bincount(gi.ravel(), weights=c)
    b = np.bincount(si.ravel(), weights=c)
    p = c / n
    split = float(-np.sum(p * np.log2(c / a[gi.ravel()]))) + 0.0  # + 0.0: no "-0"
    merge = float(-np.sum(p * np.log2(c / b[si.ravel()]))) + 0.0
    sum_c2, sum_a2, sum_b2 = c @ c - n, a @ a - n, b @ b - n
    arand = float(1.0 - sum_c2 / (0.5 * sum_a2 + 0.5 * sum_b2)) if sum_a2 + sum_b2 > 0 else 0.0
    return {"vi_split": split, "vi_merge": merge, "vi": split + merge, "adapted_rand_error": arand,
            "cremi_score": math.sqrt(max(arand, 0.0) * (split + merge)), "voxels": int(n),
            "gt_labels": int(a.size), "seg_labels": int(b.size)}


def volume_scores(seg: Labels, gt: Labels, **kwargs: Any) -> dict[str, float]:
    """3D scores of a segmentation against ground truth (blockwise; ``client`` for Dask)."""
    return scores_from_table(*contingency(seg, gt, **kwargs))


# --------------------------------------------------------------------------- ISBI, per slice


def isbi_slices(seg: Labels, gt: Labels, z0: int, z1: int) -> dict[str, Any]:
    """Per-slice V_rand / V_info F-scores and summed 2012 pair counts of slices z0…z1−1."""
    import fastremap

    from pipeline.metrics.contingency import pair_stats
    from pipeline.metrics.info import vinfo_f
    from pipeline.metrics.labels import label4
    from pipeline.metrics.rand import rand2012_counts, vrand_f

    vrand, vinfo, pairs = [], [], np.zeros(3, dtype=np.int64)
    for z in range(z0, z1):
        g = _read(gt, (slice(z, z + 1),))[0]
        s = _read(seg, (slice(z, z + 1),))[0]
        gt_lab, n_gt = label4(g > 0)
        seg_lab, _ = fastremap.renumber(np.ascontiguousarray(s), preserve_zero=True, in_place=False)
        seg_lab = seg_lab.astype(np.int64)
        stats = pair_stats(gt_lab, seg_lab, n_gt, int(seg_lab.max()) if seg_lab.size else 0)
        vrand.append(vrand_f(stats))
        vinfo.append(vinfo_f(stats))
        pairs += np.asarray(rand2012_counts(stats), dtype=np.int64)
    return {"vrand": vrand, "vinfo": vinfo, "pairs": pairs}


def isbi_labels(seg: Labels, gt: Labels, *, slices_per_task: int = 4, client: Any = None) -> dict[str, Any]:
    """ISBI 2012 scores of a label proposal, slice by slice (macro V_rand/V_info, micro 2012 Rand)."""
    from pipeline.metrics.pixel import f_score

    shape = check_pair(seg, gt)
    if len(shape) == 2:
        seg, gt = np.asarray(seg)[None], np.asarray(gt)[None]
        shape = (1, *shape)
    ranges = [(z, min(z + slices_per_task, shape[0])) for z in range(0, shape[0], slices_per_task)]
    if client is None:
        parts = [isbi_slices(seg, gt, a, b) for a, b in ranges]
    else:
        n = len(ranges)
        parts = client.gather(client.map(isbi_slices, [seg] * n, [gt] * n, *zip(*ranges, strict=True), pure=False))
    vrand = np.mean([v for p in parts for v in p["vrand"]])
    vinfo = np.mean([v for p in parts for v in p["vinfo"]])
    tp, fp, fn = (int(v) for v in np.sum([p["pairs"] for p in parts], axis=0))
    f2012 = f_score(tp, fp, fn)
    return {"v_rand": float(vrand), "v_info": float(vinfo), "rand_error": float(1 - vrand),
            "info_error": float(1 - vinfo), "rand_error_2012": float(1 - f2012), "n_slices": shape[0]}


def isbi_probability_slices(pred: Labels, gt: Labels, z0: int, z1: int) -> tuple[list[Any], bool]:
    """`pipeline.metrics.sweep.slice_counts` of slices z0…z1−1 of a probability stack; binary?"""
    from pipeline.metrics.inputs import is_binary, normalize_gt, normalize_proposal
    from pipeline.metrics.sweep import slice_counts

    counts, binary = [], True
    for z in range(z0, z1):
        prop = normalize_proposal(_read(pred, (slice(z, z + 1),))[0], "pred")
        counts.append(slice_counts(normalize_gt(_read(gt, (slice(z, z + 1),))[0], "gt"), prop))
        binary = binary and is_binary(prop)
    return counts, binary


def isbi_probability(pred: Labels, gt: Labels, *, slices_per_task: int = 4, client: Any = None) -> dict[str, Any]:
    """The ISBI 2012 metrics of a probability stack too large for memory: per-slice counts
    on the workers, reduced once (`pipeline.metrics.evaluate.reduce_counts`): equal to
    `evaluate_stack` on a stack that fits."""
    from pipeline.metrics.evaluate import reduce_counts

    (p_shape, _), (g_shape, _) = _shape_dtype(pred), _shape_dtype(gt)
    if p_shape != g_shape or len(p_shape) != 3:
        raise ValueError(f"expected PRED and GT stacks (z, y, x) of the same shape, got {p_shape} and {g_shape}")
    ranges = [(z, min(z + slices_per_task, p_shape[0])) for z in range(0, p_shape[0], slices_per_task)]
    if client is None:
        parts = [isbi_probability_slices(pred, gt, a, b) for a, b in ranges]
    else:
        n = len(ranges)
        parts = client.gather(client.map(isbi_probability_slices, [pred] * n, [gt] * n, *zip(*ranges, strict=True), pure=False))
    return reduce_counts([c for counts, _ in parts for c in counts], binary=all(b for _, b in parts))


def block_slices(shape: Sequence[int], block: Sequence[int]) -> list[tuple[slice, ...]]:
    """Write-ROI slices of a block grid over ``shape`` (helper for callers and tests)."""
    grid = BlockGrid(tuple(shape), tuple(block), (0,) * len(shape), (0,) * len(shape))  # type: ignore[arg-type]
    return [Roi.to_slices(grid.block(b).write_roi) for b in grid.block_ids()]
