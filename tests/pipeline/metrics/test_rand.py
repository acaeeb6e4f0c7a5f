"""Foreground-restricted Rand scores: hand-computed examples with singletons."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.contingency import pair_stats
from pipeline.metrics.rand import plain_pair_stats, rand2012_counts, thinned_pair_stats, vrand_f


def test_vrand_with_a_singleton_by_hand():
    # GT A1 = {x0, x1}, A2 = {x3, x4}; proposal B1 = {x0}, dam at x1 (singleton), B2 = {x3, x4}
    st = pair_stats(np.array([[1, 1, 0, 2, 2]]), np.array([[1, 0, 0, 2, 2]]))
    # N·n² = sum c² + s = (1 + 4) + 1 = 6; sum b² + s = 5 + 1 = 6; sum a² = 8
    precision, recall = 6 / 6, 6 / 8
    assert vrand_f(st) == pytest.approx(2 * precision * recall / (precision + recall))
    assert vrand_f(st) == pytest.approx(6 / 7)
    assert rand2012_counts(st) == (6, 0, 2)


def test_merge_lowers_precision_split_lowers_recall():
    gt = np.array([[1, 1, 0, 2, 2]])
    merged = pair_stats(gt, np.array([[1, 1, 1, 1, 1]]))
    # c = [[2], [2]] -> sum c² = 8, b = [4] -> 16, a = [2, 2] -> 8
    assert vrand_f(merged) == pytest.approx(2 * 0.5 * 1 / 1.5)
    split = pair_stats(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]]))
    assert vrand_f(split) == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_no_foreground_is_undefined():
    assert np.isnan(vrand_f(pair_stats(np.zeros((2, 2), int), np.ones((2, 2), int))))


def test_thinning_turns_thick_boundaries_into_basins():
    # GT: two cells separated by a 1-px membrane; proposal: a 3-px boundary band
    gt = np.array([[1, 1, 1, 0, 1, 1, 1]] * 3, bool)
    prop = np.array([[1, 1, 0, 0, 0, 1, 1]] * 3, float)
    thinned = thinned_pair_stats(gt, prop, 0.5)
    plain = plain_pair_stats(gt, prop, 0.5)
    assert vrand_f(thinned) == 1.0  # the dam falls on the GT membrane (x = 3)
    assert plain.singletons == 6 and vrand_f(plain) < 1.0
