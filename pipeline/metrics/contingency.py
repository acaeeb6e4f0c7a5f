"""Foreground-restricted contingency statistics of two 2D segmentations.

For a GT segmentation ``A`` (label 0 = membrane, excluded: *foreground restriction*) and
a proposal segmentation ``B`` (label 0 = boundary / watershed dam), let ``c_ij`` be the
number of pixels with GT label ``i >= 1`` and proposal label ``j``; ``n = sum_ij c_ij``
is the number of GT-foreground pixels. Every proposal pixel labelled 0 inside the GT
foreground is a *singleton* segment of its own; ``s = sum_i c_i0`` counts them.

:func:`pair_stats` returns, in one O(N) pass (compiled with numba):

* ``n``, ``sum_c2 = sum_{i, j>=1} c_ij^2``, ``sum_a2 = sum_i a_i^2`` with
  ``a_i = sum_{j>=0} c_ij`` (row sums include the singleton column),
  ``sum_b2 = sum_{j>=1} b_j^2`` with ``b_j = sum_{i>=1} c_ij``, and ``s``;
* the entropies (natural log) the Java ``VariationOfInformation`` computes, on the
  normalised table ``p = c / n``::

      H(A)   = -sum_i (a_i/n) log(a_i/n)
      H(B)   = -sum_{j>=1} (b_j/n) log(b_j/n) + (s/n) log n
      H(A,B) = -sum_{i,j>=1} (c_ij/n) log(c_ij/n) + (s/n) log n

  (each singleton contributes ``-(1/n) log(1/n)``). Normalising before taking the log
  keeps ``H = 0`` exact for a single segment, which the Java zero-entropy rule tests.

Counts are int64 (exact). These are the only numbers the Rand and information scores
need, so per-slice results are tiny and can be reduced across slices (Dask-friendly).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

__all__ = ["PairStats", "pair_stats"]


class PairStats(NamedTuple):
    """Foreground-restricted pair statistics of one slice (see module docstring)."""

    n: int
    sum_c2: int
    sum_a2: int
    sum_b2: int
    singletons: int
    h_a: float
    h_b: float
    h_ab: float


@njit(cache=True, nogil=True)
def _xlogx_sum(counts: np.ndarray, n: float) -> float:
    total = 0.0
    for k in range(counts.shape[0]):
        c = counts[k]
        if c > 0:
            p = c / n
            total += p * math.log(p)
    return total


@njit(cache=True, nogil=True)
def _pair_stats(gt: np.ndarray, seg: np.ndarray, n_gt: int, n_seg: int):
    size = gt.shape[0]
    a = np.zeros(n_gt + 1, dtype=np.int64)
    b = np.zeros(n_seg + 1, dtype=np.int64)
    singletons = 0
    for k in range(size):
        i = gt[k]
        if i > 0:
            a[i] += 1
            j = seg[k]
            if j > 0:
                b[j] += 1
            else:
                singletons += 1
    n = 0
    for i in range(1, n_gt + 1):
        n += a[i]
    if n == 0:
        return 0, 0, 0, 0, 0, 0.0, 0.0, 0.0

    # counting sort of the foreground, non-singleton pixels by proposal label j
    start = np.zeros(n_seg + 2, dtype=np.int64)
    for j in range(1, n_seg + 1):
        start[j + 1] = start[j] + b[j]
    fill = start.copy()
    rows = np.empty(n - singletons, dtype=np.int32)
    for k in range(size):
        i = gt[k]
        if i > 0:
            j = seg[k]
            if j > 0:
                rows[fill[j]] = i
                fill[j] += 1

    nf = float(n)
    scratch = np.zeros(n_gt + 1, dtype=np.int64)
    touched = np.empty(n_gt + 1, dtype=np.int32)
    sum_c2 = 0
    xlogx_c = 0.0
    for j in range(1, n_seg + 1):
        n_touched = 0
        for r in range(start[j], start[j + 1]):
            i = rows[r]
            if scratch[i] == 0:
                touched[n_touched] = i
                n_touched += 1
            scratch[i] += 1
        for t in range(n_touched):
            i = touched[t]
            c = scratch[i]
            sum_c2 += c * c
            p = c / nf
            xlogx_c += p * math.log(p)
            scratch[i] = 0

    sum_a2 = 0
    for i in range(1, n_gt + 1):
        sum_a2 += a[i] * a[i]
    sum_b2 = 0
    for j in range(1, n_seg + 1):
        sum_b2 += b[j] * b[j]
    single_term = (singletons / nf) * math.log(nf)
    h_a = -_xlogx_sum(a[1:], nf)
    h_b = -_xlogx_sum(b[1:], nf) + single_term
    h_ab = -xlogx_c + single_term
    return n, sum_c2, sum_a2, sum_b2, singletons, h_a, h_b, h_ab


def pair_stats(gt_labels: np.ndarray, seg_labels: np.ndarray, n_gt: int | None = None, n_seg: int | None = None) -> PairStats:
    """Foreground-restricted contingency statistics of two 2D label images.

    ``gt_labels``: GT segments (0 = membrane, excluded). ``seg_labels``: proposal
    segments (0 = boundary pixels, each a singleton). ``n_gt`` / ``n_seg`` are the
    largest labels (computed when omitted). Labels must be non-negative integers.
    """
    gt = np.asarray(gt_labels)
    seg = np.asarray(seg_labels)
    if gt.shape != seg.shape:
        raise ValueError(f"expected label images of the same shape, got {gt.shape} and {seg.shape}")
    gt_flat = np.ascontiguousarray(gt, dtype=np.int32).ravel()
    seg_flat = np.ascontiguousarray(seg, dtype=np.int32).ravel()
    if gt_flat.size and (gt_flat.min() < 0 or seg_flat.min() < 0):
        raise ValueError("expected non-negative labels, got a negative label")
    if n_gt is None:
        n_gt = int(gt_flat.max()) if gt_flat.size else 0
    if n_seg is None:
        n_seg = int(seg_flat.max()) if seg_flat.size else 0
    out = _pair_stats(gt_flat, seg_flat, int(n_gt), int(n_seg))
    return PairStats(int(out[0]), int(out[1]), int(out[2]), int(out[3]), int(out[4]),
                     float(out[5]), float(out[6]), float(out[7]))
