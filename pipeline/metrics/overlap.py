"""Overlap scores: foreground IoU (U-Net paper, ISBI 2015 cell tracking) and the CTC SEG measure.

* :func:`foreground_iou`: the "IoU" the U-Net paper reports for the PhC-U373 and
  DIC-HeLa datasets: ``|P ∩ G| / |P ∪ G|`` of the binarised proposal foreground
  ``P = proposal > threshold`` (float64, strict, default 0.5) against the GT foreground
  ``G = GT > 0``, over all pixels of the input (any dimensionality). Both empty -> 1.0.
* :func:`seg_measure`: the Cell Tracking Challenge SEG measure on *instance* label
  images (0 = background): for every GT object ``S`` (label > 0), the predicted object
  ``R`` matches when it covers more than half of ``S`` (``|R ∩ S| > 0.5 |S|``, at most one
  ``R`` can); the object scores the Jaccard index ``|R ∩ S| / |R ∪ S|``, or 0 without a
  match. SEG is the mean over GT objects. :func:`seg_counts` returns the sum and the
  number of objects so tiles / slices can be reduced (only valid when objects do not cross
  tile borders). Label a binary map first (e.g. :func:`.labels.label4`) to score it.
"""

from __future__ import annotations

import numpy as np

from .inputs import normalize_gt, normalize_proposal

__all__ = ["foreground_iou", "iou_counts", "seg_counts", "seg_measure"]


def iou_counts(proposal: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> tuple[int, int]:
    """``(intersection, union)`` pixel counts of the proposal and GT foregrounds."""
    prop = normalize_proposal(proposal, "pred")
    cells = normalize_gt(gt, "gt")
    if prop.shape != cells.shape:
        raise ValueError(f"expected pred and gt of the same shape, got {prop.shape} and {cells.shape}")
    fg = prop > np.float64(threshold)
    return int(np.count_nonzero(fg & cells)), int(np.count_nonzero(fg | cells))


def foreground_iou(proposal: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Foreground IoU of ``proposal > threshold`` vs ``GT > 0`` (1.0 when both are empty)."""
    inter, union = iou_counts(proposal, gt, threshold)
    return 1.0 if union == 0 else inter / union


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected {name} as an integer instance label image, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"expected {name} labels >= 0, got minimum {arr.min()!r}")
    return arr.ravel().astype(np.int64)


def seg_counts(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[float, int]:
    """``(sum of per-object Jaccard, number of GT objects)`` of the CTC SEG measure."""
    pred = _check_labels(pred_labels, "pred_labels")
    gt = _check_labels(gt_labels, "gt_labels")
    if np.shape(pred_labels) != np.shape(gt_labels):
        raise ValueError(
            f"expected pred_labels and gt_labels of the same shape, got {np.shape(pred_labels)} and {np.shape(gt_labels)}"
        )
    gt_ids, gt_sizes = np.unique(gt[gt > 0], return_counts=True)
    if gt_ids.size == 0:
        return 0.0, 0
    pred_ids, pred_sizes = np.unique(pred[pred > 0], return_counts=True)
    pred_size = dict(zip(pred_ids.tolist(), pred_sizes.tolist()))
    both = (gt > 0) & (pred > 0)
    best: dict[int, float] = {}
    if not both.any():
        return 0.0, int(gt_ids.size)
    pairs, overlaps = np.unique(np.stack([gt[both], pred[both]]), axis=1, return_counts=True)
    gt_size = dict(zip(gt_ids.tolist(), gt_sizes.tolist()))
    for (g, p), inter in zip(pairs.T.tolist(), overlaps.tolist()):
        if 2 * inter > gt_size[g]:  # covers more than half of the GT object
            best[g] = inter / (gt_size[g] + pred_size[p] - inter)
    return float(sum(best.values())), int(gt_ids.size)


def seg_measure(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """CTC SEG: mean Jaccard over GT objects (NaN when the GT has no object)."""
    total, count = seg_counts(pred_labels, gt_labels)
    return float("nan") if count == 0 else total / count
