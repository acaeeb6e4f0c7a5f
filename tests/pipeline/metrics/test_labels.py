"""4-connected labelling helpers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.labels import label4, label8


def test_diagonal_pixels_are_separate_in_4_connectivity():
    mask = np.array([[1, 0], [0, 1]], bool)
    assert label4(mask)[1] == 2
    assert label8(mask)[1] == 1


def test_label4_dtype_and_background():
    labels, n = label4(np.array([[0, 3, 3], [0, 0, 2]]))
    assert labels.dtype == np.int32 and n == 1
    assert labels[0, 0] == 0 and labels[0, 1] == labels[1, 2] == 1


def test_label4_rejects_3d():
    with pytest.raises(ValueError, match="expected a 2D mask"):
        label4(np.zeros((2, 2, 2)))
