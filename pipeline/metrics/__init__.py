"""ISBI 2012 challenge metrics, IoU and the cell-tracking SEG measure (pure per-slice functions).

Entry point: :func:`evaluate_stack` (all five leaderboard metrics of a stack). The
per-slice building blocks (:func:`slice_counts`, :func:`reduce_counts`) are pure, so a
Dask layer can map them over the slices of a large volume. See ``docs/metrics.md``.
"""

from .evaluate import evaluate_stack, reduce_counts
from .overlap import foreground_iou, seg_measure
from .sweep import SliceCounts, slice_counts
from .thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09, binarize, java_thresholds

__all__ = [
    "THRESHOLDS_0_09",
    "THRESHOLDS_0_1",
    "SliceCounts",
    "binarize",
    "evaluate_stack",
    "foreground_iou",
    "java_thresholds",
    "reduce_counts",
    "seg_measure",
    "slice_counts",
]
