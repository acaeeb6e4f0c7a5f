"""Information-theoretic score after thinning: V_info (final ISBI metric).

Same segmentations, singletons and foreground restriction as V_rand (:mod:`.rand`),
natural logarithm. With the entropies of :class:`.contingency.PairStats`, the Java
``VariationOfInformation`` computes **(parity)**::

    H(A|B) = H(A,B) - H(B)          H(B|A) = H(A,B) - H(A)
    P = (H(A) - H(A|B)) / H(A)      R = (H(B) - H(B|A)) / H(B)
    if H(A) == 0: P, R = 0, 1       if H(B) == 0: P, R = 1, 0
    F = 2PR / (P + R)               ( = 2 I(A;B) / (H(A) + H(B)) )

so a slice where either entropy is exactly zero scores F = 0. F is averaged over slices
(macro), maximised over the thresholds; info error = 1 − max. A slice without GT
foreground, or independent segmentations (``I(A;B) = 0`` exactly, so P + R = 0), have an
undefined F (NaN), as in Java; NaN never wins the maximum.
"""

from __future__ import annotations

from .contingency import PairStats

__all__ = ["vinfo_f"]


def vinfo_f(stats: PairStats) -> float:
    """Per-slice information-theoretic F-score with the Java zero-entropy rule."""
    if stats.n == 0:
        return float("nan")
    h_a, h_b, h_ab = stats.h_a, stats.h_b, stats.h_ab
    h_a_given_b = h_ab - h_b
    h_b_given_a = h_ab - h_a
    precision = (h_a - h_a_given_b) / h_a if h_a != 0 else 0.0
    recall = (h_b - h_b_given_a) / h_b if h_b != 0 else 1.0
    if h_a == 0:
        precision, recall = 0.0, 1.0
    if h_b == 0:
        precision, recall = 1.0, 0.0
    denominator = precision + recall
    if denominator == 0:  # I(A;B) = 0 with both entropies > 0: Java's 0/0 gives NaN
        return float("nan")
    return 2.0 * precision * recall / denominator
