"""Foreground-restricted Rand scores: V_rand (after thinning) and the 2012 Rand error.

Both use :class:`.contingency.PairStats` of the GT segments ``A`` (4-connected
components of ``GT > 0``, membrane excluded) against a proposal segmentation ``B``
whose 0-labelled pixels inside the GT foreground are singletons. With ``p = c / n``:

* ``N = sum_{i, j>=1} p_ij^2 + s`` with the singleton term ``s = sum_i p_i0 / n``;
* precision = ``N / (sum_{j>=1} b_j^2 + s)``, recall = ``N / sum_i a_i^2``;
* F = 2PR / (P + R).

We evaluate these ratios on the integer counts (multiply through by ``n^2``), which is
exact; the Java's normalised doubles agree to ~1e-16.

**V_rand** (final metric): ``B`` = watershed-thinned proposal (:mod:`.thinning`); F per
slice, *averaged over slices* (macro), maximised over the thresholds 0..1 (only 0 for a
binary proposal). rand error = 1 − max. A slice without GT foreground has an undefined F
(NaN, as in Java), which makes that threshold's average NaN; NaN never wins the maximum.

**2012 Rand error**: ``B`` = 4-connected components of ``proposal > th``, no thinning;
the pair counts ``TP = n^2 N``, ``FP = n^2 (sum b_j^2 + s) - TP``,
``FN = n^2 sum a_i^2 - TP`` are *summed over slices* (micro) before F is computed with
the rules of :func:`.pixel.f_score`. rand error 2012 = 1 − max over 0..1.
"""

from __future__ import annotations

import numpy as np

from .contingency import PairStats, pair_stats
from .labels import label4
from .thinning import thin_boundaries

__all__ = ["plain_pair_stats", "rand2012_counts", "thinned_pair_stats", "vrand_f"]


def vrand_f(stats: PairStats) -> float:
    """Per-slice foreground-restricted Rand F-score (NaN without GT foreground)."""
    if stats.n == 0:
        return float("nan")
    num = float(stats.sum_c2 + stats.singletons)
    precision = num / float(stats.sum_b2 + stats.singletons)
    recall = num / float(stats.sum_a2)
    return 2.0 * precision * recall / (precision + recall)


def rand2012_counts(stats: PairStats) -> tuple[int, int, int]:
    """Pair counts ``(TP, FP, FN)`` of one slice, to be summed over slices (micro)."""
    tp = stats.sum_c2 + stats.singletons
    return tp, stats.sum_b2 - stats.sum_c2, stats.sum_a2 - tp


def _gt_labels(gt_cells: np.ndarray) -> tuple[np.ndarray, int]:
    return label4(np.asarray(gt_cells) != 0)


def thinned_pair_stats(gt_cells: np.ndarray, proposal: np.ndarray, threshold: float) -> PairStats:
    """PairStats of GT components vs the thinned ``proposal > threshold`` (one 2D slice)."""
    gt_lab, n_gt = _gt_labels(gt_cells)
    seg, n_seg = thin_boundaries(np.asarray(proposal, dtype=np.float64) > np.float64(threshold))
    return pair_stats(gt_lab, seg, n_gt, n_seg)


def plain_pair_stats(gt_cells: np.ndarray, proposal: np.ndarray, threshold: float) -> PairStats:
    """PairStats of GT components vs the 4-components of ``proposal > threshold`` (no thinning)."""
    gt_lab, n_gt = _gt_labels(gt_cells)
    seg, n_seg = label4(np.asarray(proposal, dtype=np.float64) > np.float64(threshold))
    return pair_stats(gt_lab, seg, n_gt, n_seg)
