"""Input validation at the boundary: "expected X, got Y" messages and scaling."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.inputs import as_stack, is_binary, normalize_gt, normalize_proposal, validate_pair


def test_uint8_and_uint16_are_scaled_to_unit_interval():
    assert normalize_proposal(np.array([0, 51, 255], np.uint8)).tolist() == [0.0, 0.2, 1.0]
    assert normalize_proposal(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    assert normalize_proposal(np.array([True, False])).tolist() == [1.0, 0.0]


def test_float_proposal_becomes_float64_unchanged():
    prop = np.array([0.25, np.float32(0.3)], np.float32)
    out = normalize_proposal(prop)
    assert out.dtype == np.float64 and out[1] == np.float64(np.float32(0.3))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([0.0, 1.5]), r"expected pred values in \[0, 1\], got range"),
        (np.array([0.0, -0.1]), r"expected pred values in \[0, 1\]"),
        (np.array([0.0, np.nan]), "expected pred without NaN, got 1 NaN"),
        (np.array([1, 2], np.int32), "expected pred as float in"),
    ],
)
def test_bad_proposals_raise(values, message):
    with pytest.raises(ValueError, match=message):
        normalize_proposal(values)


def test_gt_conventions():
    assert normalize_gt(np.array([0, 255, 7], np.uint8)).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="expected gt labels >= 0"):
        normalize_gt(np.array([-1, 1]))
    with pytest.raises(ValueError, match="expected gt without NaN"):
        normalize_gt(np.array([np.nan, 1.0]))


def test_shapes_and_ndim():
    assert as_stack(np.zeros((4, 5)), "pred").shape == (1, 4, 5)
    with pytest.raises(ValueError, match="expected pred to be a 2D image .* got ndim=1"):
        as_stack(np.zeros(5), "pred")
    with pytest.raises(ValueError, match="got ndim=4"):
        as_stack(np.zeros((1, 2, 3, 4)), "pred")
    with pytest.raises(ValueError, match=r"expected pred and gt of the same shape, got pred \(4, 5\) and gt \(5, 4\)"):
        validate_pair(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="expected a non-empty gt"):
        as_stack(np.zeros((0, 3)), "gt")


def test_binary_detection():
    assert is_binary(np.array([0.0, 1.0, 1.0]))
    assert not is_binary(np.array([0.0, 0.5]))
