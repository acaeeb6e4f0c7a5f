"""Pixel error: hand-computed F-scores and the Java conventions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.pixel import best_of, f_score, pixel_counts, pixel_error
from pipeline.metrics.thresholds import THRESHOLDS_0_1


def test_f_score_conventions():
    assert f_score(3, 1, 0) == pytest.approx(6 / 7)  # P = 3/4, R = 1
    assert f_score(0, 0, 0) == 1.0  # no FP and no FN: P = R = 1
    assert f_score(0, 0, 3) == 0.0  # P = 1 (FP = 0), R = 0
    assert f_score(0, 2, 3) == 0.0  # P = R = 0


def test_hand_computed_sweep():
    gt = np.array([[0, 255, 255, 255]])
    prop = np.array([[0.7, 0.6, 0.4, 0.9]])
    counts = pixel_counts(gt > 0, prop, THRESHOLDS_0_1)
    expected = [
        (3, 1, 0), (3, 1, 0), (3, 1, 0), (3, 1, 0),  # 0 .. 0.30000000000000004
        (2, 1, 1), (2, 1, 1),                        # 0.4 (0.4 > 0.4 is False), 0.5
        (1, 1, 2),                                   # 0.6
        (1, 0, 2), (1, 0, 2), (1, 0, 2),             # 0.7, 0.79.., 0.89..
        (0, 0, 3),                                   # 0.9999999999999999
    ]
    assert counts.tolist() == [list(e) for e in expected]
    err, k, f = pixel_error(counts)
    assert k == 0 and err == pytest.approx(1 / 7)
    assert f[4] == pytest.approx(2 / 3) and f[6] == pytest.approx(0.4) and f[7] == pytest.approx(0.5)
    assert f[10] == 0.0


def test_best_of_keeps_first_maximum_and_ignores_nan():
    assert best_of([0.5, 0.7, 0.7]) == (0.7, 1)
    assert best_of([float("nan"), 0.2]) == (0.2, 1)
    assert best_of([float("nan")]) == (0.0, 0)


def test_float32_proposal_counts_follow_float64():
    th = THRESHOLDS_0_1[3]
    prop = np.array([[np.float32(0.3)]], np.float32)
    counts = pixel_counts(np.array([[True]]), prop, [th])
    assert counts.tolist() == [[1, 0, 0]]  # a float32 comparison would give [[0, 0, 1]]
