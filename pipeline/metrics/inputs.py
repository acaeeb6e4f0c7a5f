"""Validation and normalisation of metric inputs at the boundary.

Conventions
-----------
* Ground truth (GT): ``0`` = membrane (boundary), ``> 0`` = cell interior. The ISBI files
  are uint8 ``0 / 255``; any integer, boolean or integer-valued float label image is
  accepted (a float GT with fractional values is a probability map: PRED and GT swapped?
  It is refused). An all-zero GT (no cell at all) is scored with a warning. Only
  ``GT > 0`` is used: for integer-valued GT this equals the Java's ``GT > th`` at every
  threshold ``th < 1`` of the sweeps.
* Proposal: the network's *cell* probability in ``[0, 1]`` (``0`` = certainly membrane).
  float16/32/64 are cast to float64 (never compared in float32); values at most
  `PROBABILITY_TOLERANCE` outside ``[0, 1]`` (rounding in another program's arithmetic,
  e.g. ``1.0000000000000002``) are clipped, anything further out is refused; ``uint8`` is divided by
  255, ``uint16`` by 65535; ``bool`` maps to 0/1. A proposal whose values are all 0 or 1
  is *binary*.
* A 2D array is one slice; a 3D array is a stack ``(Z, Y, X)`` evaluated slice by slice.

Every failure raises :class:`ValueError` with a message "expected X, got Y".
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROBABILITY_TOLERANCE", "as_stack", "is_binary", "normalize_gt", "normalize_proposal", "validate_pair"]

PROBABILITY_TOLERANCE = 1e-6  # how far outside [0, 1] a float proposal may stray (then clipped)


def as_stack(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a 3D stack ``(Z, Y, X)``; a 2D image becomes one slice."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    elif arr.ndim != 3:
        raise ValueError(
            f"expected {name} to be a 2D image (Y, X) or a 3D stack (Z, Y, X), "
            f"got ndim={arr.ndim} with shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"expected a non-empty {name}, got shape {arr.shape}")
    return arr


def normalize_proposal(proposal: np.ndarray, name: str = "pred") -> np.ndarray:
    """Proposal as a float64 array in ``[0, 1]`` (same shape), scaled per its dtype."""
    arr = np.asarray(proposal)
    kind = arr.dtype
    if kind == np.bool_:
        return arr.astype(np.float64)
    if kind == np.uint8:
        return arr.astype(np.float64) / 255.0
    if kind == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if not np.issubdtype(kind, np.floating):
        raise ValueError(
            f"expected {name} as float in [0, 1], uint8, uint16 or bool, got dtype {kind}"
        )
    values = arr.astype(np.float64)
    if np.isnan(values).any():
        raise ValueError(f"expected {name} without NaN, got {int(np.isnan(values).sum())} NaN pixel(s)")
    lo, hi = float(values.min()), float(values.max())
    if lo < -PROBABILITY_TOLERANCE or hi > 1.0 + PROBABILITY_TOLERANCE:
        raise ValueError(
            f"expected {name} values in [0, 1], got range [{lo!r}, {hi!r}] (tolerance {PROBABILITY_TOLERANCE:g}); "
            "a probability map is needed (uint8 = p·255 or float p)"
        )
    if lo < 0.0 or hi > 1.0:
        np.clip(values, 0.0, 1.0, out=values)
    return values


def normalize_gt(gt: np.ndarray, name: str = "gt") -> np.ndarray:
    """Boolean cell mask ``GT > 0`` (same shape); rejects NaN and negative labels."""
    arr = np.asarray(gt)
    if arr.dtype == np.bool_:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"expected {name} as an integer, float or bool label image, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise ValueError(f"expected {name} without NaN, got {int(np.isnan(arr).sum())} NaN pixel(s)")
        fractional = arr[arr != np.round(arr)]
        if fractional.size:
            raise ValueError(
                f"expected {name} as integer-valued labels (0 = membrane, > 0 = cell), got {fractional.size} "
                f"fractional value(s) such as {float(fractional.flat[0])!r}: a probability map? Check the order "
                "of the arguments (PRED first, then GT)"
            )
    if arr.min() < 0:
        raise ValueError(f"expected {name} labels >= 0 (0 = membrane, > 0 = cell), got minimum {arr.min()!r}")
    return arr > 0


def is_binary(proposal: np.ndarray) -> bool:
    """True when every proposal value is exactly 0 or 1 (after scaling)."""
    values = np.asarray(proposal)
    return bool(np.all((values == 0.0) | (values == 1.0)))


def validate_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise a (proposal, GT) pair into float64 and bool stacks ``(Z, Y, X)``."""
    pred_arr = as_stack(pred, "pred")
    gt_arr = as_stack(gt, "gt")
    if pred_arr.shape != gt_arr.shape:
        raise ValueError(
            f"expected pred and gt of the same shape, got pred {np.shape(pred)} and gt {np.shape(gt)}"
        )
    return normalize_proposal(pred_arr, "pred"), normalize_gt(gt_arr, "gt")
