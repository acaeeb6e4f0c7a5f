"""Information-theoretic score V_info: hand-computed examples and the Java zero rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics.contingency import pair_stats
from pipeline.metrics.info import vinfo_f

L2, L43 = math.log(2), math.log(4 / 3)


def test_hand_computed_f():
    # GT {x0,x1} {x2,x3}; proposal {x0} {x1,x2,x3}
    st = pair_stats(np.array([[1, 1, 2, 2]]), np.array([[1, 2, 2, 2]]))
    h_a, h_b = L2, 0.5 * L2 + 0.75 * L43
    mutual = 0.75 * L43
    assert st.h_a == pytest.approx(h_a) and st.h_b == pytest.approx(h_b)
    assert st.h_ab == pytest.approx(1.5 * L2)
    assert vinfo_f(st) == pytest.approx(2 * mutual / (h_a + h_b))


def test_singletons_enter_the_entropies():
    # proposal {x0}, dam at x1 (singleton), {x2, x3}: H(B) = H(A,B) = 1.5 log 2, I = log 2
    st = pair_stats(np.array([[1, 1, 2, 2]]), np.array([[1, 0, 2, 2]]))
    assert vinfo_f(st) == pytest.approx(2 * L2 / (L2 + 1.5 * L2))  # = 0.8


def test_zero_gt_entropy_gives_f_zero():
    st = pair_stats(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 2, 2]]))
    assert st.h_a == 0.0
    assert vinfo_f(st) == 0.0


def test_zero_proposal_entropy_gives_f_zero():
    # a perfect merge of two GT cells: H(B) = 0, so F = 0 by the Java rule
    st = pair_stats(np.array([[1, 1, 2, 2]]), np.array([[5, 5, 5, 5]]))
    assert st.h_b == 0.0
    assert vinfo_f(st) == 0.0


def test_independent_segmentations_are_undefined():
    # I(A;B) = 0 exactly with both entropies > 0: Java computes 0/0
    st = pair_stats(np.array([[1, 1, 2, 2]]), np.array([[1, 2, 1, 2]]))
    assert np.isnan(vinfo_f(st))


def test_perfect_segmentation_scores_one():
    gt = np.array([[1, 1, 0, 2, 2]])
    assert vinfo_f(pair_stats(gt, gt)) == pytest.approx(1.0)
