"""Per-slice threshold sweep: every count the five leaderboard metrics need, for one slice.

:func:`slice_counts` is pure (a 2D GT mask and a 2D proposal in, small count arrays out)
so a Dask layer can map it over the slices of a large Zarr volume and reduce the results
with :func:`pipeline.metrics.evaluate.reduce_counts`. Per slice it does:

* once: the 4-connected GT components;
* for each threshold of the 0..1 sweep: pixel TP/FP/FN, the watershed thinning and the
  foreground-restricted pair statistics of the thinned proposal (V_rand, V_info), and
  those of its plain 4-components (2012 Rand). These depend only on the binary mask
  ``proposal > th``; when the mask equals the previous threshold's (e.g. a binary or
  8-bit proposal) the previous row is reused, which is exact;
* for each threshold of the 0..0.9 sweep: the simple-point warping and the mismatch
  classification (these also depend on ``|proposal - th|``, so never reused);
* the classic Jain warping error at 0.5 (taken from the sweep, which contains 0.5
  exactly).

Images are transposed once to ``(X, Y)`` so that the Java column-major order is memory
order for the compiled loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .contingency import pair_stats
from .labels import label4
from .thinning import watershed_two_level_t
from .thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09
from .warping import DEFAULT_RADIUS, warping_counts_t

__all__ = ["JAIN_THRESHOLD", "SliceCounts", "slice_counts"]

#: Threshold of the classic (Jain et al.) warping error.
JAIN_THRESHOLD = 0.5


class SliceCounts(NamedTuple):
    """Counts of one slice. Row ``k`` belongs to ``thresholds[k]`` / ``warp_thresholds[k]``.

    * ``pixel``: int64 ``(T, 3)`` TP, FP, FN;
    * ``thinned`` / ``plain``: int64 ``(T, 5)`` n, sum_c2, sum_a2, sum_b2, singletons
      (:class:`.contingency.PairStats` of the thinned / unthinned proposal);
    * ``thinned_entropy``: float64 ``(T, 3)`` H(A), H(B), H(A,B) of the thinned proposal;
    * ``warp``: int64 ``(Tw, 7)`` remaining mismatches, then merge, split, hole addition,
      hole deletion, object addition, object deletion;
    * ``jain_remaining``: remaining mismatches of the warping at :data:`JAIN_THRESHOLD`.
    """

    shape: tuple[int, int]
    thresholds: tuple[float, ...]
    warp_thresholds: tuple[float, ...]
    pixel: np.ndarray
    thinned: np.ndarray
    thinned_entropy: np.ndarray
    plain: np.ndarray
    warp: np.ndarray
    jain_remaining: int


def _pair_row(gt_lab_t: np.ndarray, n_gt: int, seg_t: np.ndarray, n_seg: int) -> tuple[list[int], list[float]]:
    st = pair_stats(gt_lab_t, seg_t, n_gt, n_seg)
    return [st.n, st.sum_c2, st.sum_a2, st.sum_b2, st.singletons], [st.h_a, st.h_b, st.h_ab]


def slice_counts(
    gt_cells: np.ndarray,
    proposal: np.ndarray,
    *,
    thresholds: Sequence[float] = THRESHOLDS_0_1,
    warp_thresholds: Sequence[float] = THRESHOLDS_0_09,
    radius: int = DEFAULT_RADIUS,
) -> SliceCounts:
    """All per-threshold counts of one 2D slice.

    ``gt_cells``: boolean ``GT > 0`` mask ``(Y, X)``; ``proposal``: float64 cell
    probability in ``[0, 1]`` of the same shape (see :mod:`.inputs` for normalisation).
    """
    gt = np.asarray(gt_cells)
    prop = np.asarray(proposal, dtype=np.float64)
    if gt.ndim != 2 or gt.shape != prop.shape:
        raise ValueError(f"expected 2D gt and proposal of the same shape, got {gt.shape} and {prop.shape}")
    ths = tuple(float(t) for t in thresholds)
    wths = tuple(float(t) for t in warp_thresholds)
    gt_t = np.ascontiguousarray(gt.T != 0, dtype=np.uint8)
    prop_t = np.ascontiguousarray(prop.T)
    gt_lab_t, n_gt = label4(gt_t)
    n_pos = int(np.count_nonzero(gt_t))
    gt_bool_t = gt_t.astype(bool)

    pixel = np.zeros((len(ths), 3), dtype=np.int64)
    thinned = np.zeros((len(ths), 5), dtype=np.int64)
    entropy = np.zeros((len(ths), 3), dtype=np.float64)
    plain = np.zeros((len(ths), 5), dtype=np.int64)
    previous: np.ndarray | None = None
    for k, th in enumerate(ths):
        cells_t = prop_t > np.float64(th)
        if previous is not None and np.array_equal(cells_t, previous):
            pixel[k], thinned[k], entropy[k], plain[k] = pixel[k - 1], thinned[k - 1], entropy[k - 1], plain[k - 1]
            continue
        previous = cells_t
        tp = int(np.count_nonzero(cells_t & gt_bool_t))
        pixel[k] = (tp, int(np.count_nonzero(cells_t)) - tp, n_pos - tp)
        seg_t, n_seg = watershed_two_level_t(np.ascontiguousarray(~cells_t, dtype=np.uint8))
        thinned[k], entropy[k] = _pair_row(gt_lab_t, n_gt, seg_t, n_seg)
        plain_t, n_plain = label4(cells_t)
        plain[k], _ = _pair_row(gt_lab_t, n_gt, plain_t, n_plain)

    warp = np.zeros((len(wths), 7), dtype=np.int64)
    for k, th in enumerate(wths):
        warp[k] = warping_counts_t(gt_t, prop_t, th, radius)
    if JAIN_THRESHOLD in wths:
        jain_remaining = int(warp[wths.index(JAIN_THRESHOLD), 0])
    else:
        jain_remaining = int(warping_counts_t(gt_t, prop_t, JAIN_THRESHOLD, radius)[0])
    return SliceCounts(gt.shape, ths, wths, pixel, thinned, entropy, plain, warp, jain_remaining)
