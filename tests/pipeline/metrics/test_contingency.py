"""Foreground-restricted contingency statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.metrics.contingency import pair_stats


def test_hand_computed_table_with_a_singleton():
    # GT:  A1 A1 .  A2 A2      proposal: B1 0  0  B2 B2   (0 = dam)
    gt = np.array([[1, 1, 0, 2, 2]])
    seg = np.array([[1, 0, 0, 2, 2]])
    st_ = pair_stats(gt, seg)
    # the membrane pixel (x=2) is outside the foreground; x=1 is a singleton
    assert (st_.n, st_.sum_c2, st_.sum_a2, st_.sum_b2, st_.singletons) == (4, 1 + 4, 4 + 4, 1 + 4, 1)
    assert st_.h_a == pytest.approx(math.log(2))
    # B: {x0}, singleton {x1}, {x3, x4}
    assert st_.h_b == pytest.approx(1.5 * math.log(2))
    assert st_.h_ab == pytest.approx(1.5 * math.log(2))


def test_single_segment_has_exactly_zero_entropy():
    st_ = pair_stats(np.ones((3, 7), int), np.ones((3, 7), int))
    assert st_.h_a == 0.0 and st_.h_b == 0.0 and st_.h_ab == 0.0


def test_no_foreground_gives_zero_counts():
    st_ = pair_stats(np.zeros((2, 2), int), np.ones((2, 2), int))
    assert st_.n == 0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="expected label images of the same shape"):
        pair_stats(np.zeros((2, 2), int), np.zeros((2, 3), int))


labels = arrays(np.int32, (6, 7), elements=st.integers(0, 5))


@settings(max_examples=60, deadline=None)
@given(labels, labels, st.permutations(range(1, 6)), st.permutations(range(1, 6)))
def test_invariant_to_label_renumbering(gt, seg, perm_a, perm_b):
    lut_a = np.array([0, *perm_a]) * 7  # renumber and leave gaps
    lut_b = np.array([0, *perm_b]) * 3
    a = pair_stats(gt, seg)
    b = pair_stats(lut_a[gt], lut_b[seg])
    assert a[:5] == b[:5]
    assert np.allclose(a[5:], b[5:], rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(labels, labels)
def test_matches_brute_force_table_with_expanded_singletons(gt, seg):
    fg = gt > 0
    if not fg.any():
        return
    # every foreground dam pixel becomes a segment of its own
    expanded = seg.astype(np.int64).copy()
    dams = np.flatnonzero(fg.ravel() & (seg.ravel() == 0))
    expanded.ravel()[dams] = 100 + np.arange(dams.size)
    _, counts = np.unique(np.stack([gt[fg], expanded[fg]]), axis=1, return_counts=True)
    _, a = np.unique(gt[fg], return_counts=True)
    _, b = np.unique(expanded[fg], return_counts=True)
    st_ = pair_stats(gt, seg)
    n = fg.sum()
    assert st_.sum_c2 + st_.singletons == (counts**2).sum()
    assert st_.sum_a2 == (a**2).sum()
    assert st_.sum_b2 + st_.singletons == (b**2).sum()
    h = lambda c: float(-(c / n * np.log(c / n)).sum())  # noqa: E731
    assert st_.h_a == pytest.approx(h(a), abs=1e-12)
    assert st_.h_b == pytest.approx(h(b), abs=1e-12)
    assert st_.h_ab == pytest.approx(h(counts), abs=1e-12)
