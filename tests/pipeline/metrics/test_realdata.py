"""The metrics on the real ISBI 2012 training labels (skipped outside CI without the data)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.metrics.evaluate import evaluate_stack

pytestmark = pytest.mark.realdata

ERRORS = ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error", "warping_error_jain")


def test_identical_labels_score_zero(isbi_labels):
    labels = isbi_labels[:3]
    r = evaluate_stack(labels, labels)
    assert all(r[k] == 0.0 for k in ERRORS)
    assert r["binary_proposal"] is True and r["width"] == 512


def test_blurred_labels_give_small_plausible_errors(isbi_labels):
    labels = isbi_labels[:3]
    blurred = np.stack([ndi.gaussian_filter(s / 255.0, 2.0) for s in labels])
    r = evaluate_stack(blurred, labels)
    for key in ("pixel_error", "rand_error", "info_error", "rand_error_2012"):
        assert 0.0 < r[key] < 0.05, (key, r[key])
    assert 0.0 < r["warping_error"] < 0.002
    assert 0.0 < r["warping_error_jain"] < 0.002
    # thinning helps: the thinned Rand error is below the 2012 one
    assert r["rand_error"] < r["rand_error_2012"]
