"""Threshold sweeps and strict float64 binarisation (parity points)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09, binarize, java_thresholds

SPEC_0_1 = (0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7,
            0.7999999999999999, 0.8999999999999999, 0.9999999999999999)


def test_sweep_0_1_is_the_java_loop_bit_for_bit():
    assert THRESHOLDS_0_1 == SPEC_0_1
    assert len(THRESHOLDS_0_1) == 11
    # repeated addition, not k * 0.1: these differ from the decimal literals
    assert THRESHOLDS_0_1[3] != 0.3 and THRESHOLDS_0_1[3] == 0.1 + 0.1 + 0.1
    assert THRESHOLDS_0_1[-1] == 0.9999999999999999 < 1.0


def test_sweep_0_09_has_ten_values_ending_below_0_9():
    assert THRESHOLDS_0_09 == SPEC_0_1[:10]
    assert len(THRESHOLDS_0_09) == 10
    assert THRESHOLDS_0_09[-1] == 0.8999999999999999
    assert 0.5 in THRESHOLDS_0_09  # the Jain threshold is reached exactly


def test_java_thresholds_rejects_bad_arguments():
    with pytest.raises(ValueError, match="expected a positive step"):
        java_thresholds(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="expected start <= stop"):
        java_thresholds(1.0, 0.0, 0.1)


def test_binarisation_is_strict():
    values = np.array([0.0, 0.5, 0.5000000000000001, 1.0])
    assert binarize(values, 0.5).tolist() == [False, False, True, True]
    assert binarize(values, 0.0).tolist() == [False, True, True, True]


def test_float32_proposal_is_compared_in_float64():
    th = THRESHOLDS_0_1[3]  # 0.30000000000000004
    value = np.float32(0.3)  # = 0.30000001192092896 > th in float64
    prop = np.array([[value]], dtype=np.float32)
    # the NumPy 2 pitfall: the Python float is cast to float32 and the pixel is lost
    assert not bool((prop > th)[0, 0])
    assert bool(binarize(prop, th)[0, 0])
