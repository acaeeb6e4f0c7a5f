"""Pixel error (ISBI 2012 leaderboard) and the Java F-score rule.

Positives are *cell* pixels: ``GT > 0`` and ``proposal > th``. TP, FP and FN are summed
over all slices (micro average); per the Java ``ClassificationStatistics``:

* precision = TP / (TP + FP), or 1 if FP = 0;
* recall = TP / (TP + FN), or 1 if FN = 0;
* F = 2PR / (P + R), or 0 if P + R = 0.

pixel error = 1 − max over the thresholds 0..1 of F (the first maximum wins).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["best_of", "f_score", "pixel_counts", "pixel_error"]


def f_score(tp: float, fp: float, fn: float) -> float:
    """F-score with the Java conventions for empty denominators (see module docstring)."""
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    if precision + recall > 0:
        return 2.0 * precision * recall / (precision + recall)
    return 0.0


def pixel_counts(gt_cells: np.ndarray, proposal: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``int64[T, 3]`` of (TP, FP, FN) per threshold for one slice (or any array shape).

    ``gt_cells`` is the boolean ``GT > 0`` mask; ``proposal`` is compared in float64.
    """
    gt = np.asarray(gt_cells, dtype=bool)
    prop = np.asarray(proposal, dtype=np.float64)
    if gt.shape != prop.shape:
        raise ValueError(f"expected gt and proposal of the same shape, got {gt.shape} and {prop.shape}")
    n_pos = int(np.count_nonzero(gt))
    out = np.zeros((len(thresholds), 3), dtype=np.int64)
    for k, th in enumerate(thresholds):
        pred = prop > np.float64(th)
        tp = int(np.count_nonzero(pred & gt))
        n_pred = int(np.count_nonzero(pred))
        out[k] = (tp, n_pred - tp, n_pos - tp)
    return out


def best_of(scores: Sequence[float]) -> tuple[float, int]:
    """``(max, index)`` with the Java loop rule: start at 0, replace on strictly greater.

    NaN never wins; if nothing beats 0 the result is ``(0.0, 0)``.
    """
    best, best_k = 0.0, 0
    for k, score in enumerate(scores):
        if score > best:
            best, best_k = float(score), k
    return best, best_k


def pixel_error(counts: np.ndarray) -> tuple[float, int, np.ndarray]:
    """``(pixel error, best index, F per threshold)`` from (TP, FP, FN) summed over slices."""
    table = np.asarray(counts).reshape(-1, 3)
    f = np.array([f_score(float(tp), float(fp), float(fn)) for tp, fp, fn in table])
    best, k = best_of(f)
    return 1.0 - best, k, f
