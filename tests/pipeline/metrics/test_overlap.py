"""Foreground IoU and the Cell Tracking Challenge SEG measure."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.overlap import foreground_iou, iou_counts, seg_counts, seg_measure


def test_foreground_iou_by_hand():
    prop = np.array([[0.9, 0.2], [0.6, 0.5]])  # 0.5 is not > 0.5
    gt = np.array([[255, 255], [0, 0]], np.uint8)
    assert iou_counts(prop, gt) == (1, 3)
    assert foreground_iou(prop, gt) == pytest.approx(1 / 3)
    assert foreground_iou(np.zeros((2, 2)), np.zeros((2, 2), np.uint8)) == 1.0


def test_foreground_iou_validates():
    with pytest.raises(ValueError, match="expected pred and gt of the same shape"):
        foreground_iou(np.zeros((2, 2)), np.zeros((3, 2)))


def test_seg_by_hand():
    gt = np.array([[1, 1, 1, 0, 3, 3], [2, 2, 0, 0, 0, 0]])
    pred = np.array([[5, 5, 0, 0, 9, 0], [7, 7, 7, 0, 0, 0]])
    # object 1 (3 px): pred 5 covers 2 > 1.5 -> J = 2 / (3 + 2 - 2)
    # object 2 (2 px): pred 7 covers 2 > 1   -> J = 2 / (2 + 3 - 2)
    # object 3 (2 px): pred 9 covers exactly half (1 > 1 is False) -> 0
    total, count = seg_counts(pred, gt)
    assert count == 3 and total == pytest.approx(4 / 3)
    assert seg_measure(pred, gt) == pytest.approx(4 / 9)


def test_seg_edge_cases():
    gt = np.array([[1, 1], [0, 0]])
    assert seg_measure(np.zeros((2, 2), int), gt) == 0.0
    assert seg_measure(gt, gt) == 1.0
    assert np.isnan(seg_measure(gt, np.zeros((2, 2), int)))
    with pytest.raises(ValueError, match="expected pred_labels as an integer instance label image"):
        seg_measure(gt.astype(float), gt)
