"""Warping error (Jain et al. 2010) with the ISBI 2012 split/merge classification.

Per slice and threshold ``th`` (the Java ``WarpingError.simplePointWarp2d`` and
``classifyMismatches2d``, reproduced step by step **(parity)**):

1. *Warp* the binary GT (``GT > 0`` -> 1) toward the binarised proposal (``> th``) by
   flipping simple points only (:mod:`.topology`; outside the image = membrane).
2. Each pass lists the mismatches in column-major order (``x`` outer, ``y`` inner),
   stable-sorts them by ``|proposal - th|`` descending and flips each one, in that
   order, if it is simple *at that moment*. Passes repeat until the mismatch count stops
   changing. The sort key is rounded to float32 as the Java ``Point3f`` stores it, so
   keys equal in float32 keep their column-major order. Because a flip always removes a
   mismatch and never creates one, the remaining mismatches of a pass are a subsequence
   of the previous pass's sorted list: we sort once and sweep that list until a sweep
   flips nothing, which is the same computation.
3. Classify every remaining mismatch on the warped GT ``W`` with ``L`` = 4-connected
   labels of ``W`` (0 = membrane), ``c = L[x]`` and ``U`` = the set of labels of the
   in-image 8-neighbours (pixels outside the image are skipped, as ``getNeighborhood``
   does):

   * ``U = {0}``: object deletion if ``c != 0`` else object addition;
   * ``U = {A}``, ``A != 0``: hole addition if ``c != 0`` else hole deletion;
   * ``|U| = 2``: hole addition if ``c == 0``; else, in a ``(2r+1)²`` window of ``W``
     around ``x`` (zero outside the image; the whole image when ``r < 1`` or ``r`` exceeds
     the width or height), set ``x`` to membrane, relabel 4-connected and call it a
     *split* if more than two labels then touch ``x``, otherwise a hole deletion;
   * ``|U| > 2`` (and the degenerate ``|U| = 0`` of a 1×1 image): merge if ``c == 0``
     else split.

Leaderboard error = min over ``th`` in 0..0.9 of (split + merge pixels summed over
slices) / (W·H·Z) (first minimum wins). The classic Jain warping error at one threshold
is (remaining mismatches) / (W·H) averaged over slices.

The warping passes and the classification are compiled with numba (``nogil``); the
4-connected labelling of ``W`` uses :func:`scipy.ndimage.label` (only label *equality*
is used, so its numbering is irrelevant).

Known Java quirk not reproduced: ImageJ's ``convertToByte(true)`` maps a constant image
to 0, so for a warped slice that is *entirely* cell the Java labels every pixel 0 and
reports object additions where we report hole additions. Splits and merges, the
leaderboard classes, are unaffected.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .labels import label4
from .topology import SIMPLE_LUT

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_RADIUS",
    "WarpResult",
    "classify_mismatches",
    "jain_error",
    "leaderboard_error",
    "warp_gt",
    "warping_counts",
    "warping_counts_t",
]

#: Window radius of the ISBI 2012 leaderboard (41×41 window).
DEFAULT_RADIUS = 20
#: Order of the class counts returned by :func:`classify_mismatches`.
CLASS_NAMES: tuple[str, ...] = (
    "merge", "split", "hole_addition", "hole_deletion", "object_addition", "object_deletion",
)
_MERGE, _SPLIT, _HOLE_ADD, _HOLE_DEL, _OBJ_ADD, _OBJ_DEL = range(6)


@njit(cache=True, nogil=True)
def _warp_t(source: np.ndarray, target: np.ndarray, proposal: np.ndarray, threshold: float, lut: np.ndarray):
    """Simple-point warping in ``(X, Y)`` layout; returns (warped, remaining flat indices)."""
    width, height = source.shape
    s = np.zeros((width + 2, height + 2), dtype=np.uint8)
    count = 0
    for x in range(width):
        for y in range(height):
            s[x + 1, y + 1] = source[x, y]
            if source[x, y] != target[x, y]:
                count += 1
    idx = np.empty(count, dtype=np.int64)
    keys = np.empty(count, dtype=np.float32)
    k = 0
    for x in range(width):  # column-major listing
        for y in range(height):
            if source[x, y] != target[x, y]:
                idx[k] = x * height + y
                keys[k] = np.float32(abs(proposal[x, y] - threshold))
                k += 1
    order = np.argsort(-keys, kind="mergesort")  # stable, descending confidence
    live = idx[order]
    n_live = count
    while n_live > 0:
        flips = 0
        kept = 0
        for r in range(n_live):
            p = live[r]
            x = p // height + 1
            y = p - (p // height) * height + 1
            code = (np.int64(s[x - 1, y - 1])
                    | (np.int64(s[x, y - 1]) << 1)
                    | (np.int64(s[x + 1, y - 1]) << 2)
                    | (np.int64(s[x - 1, y]) << 3)
                    | (np.int64(s[x + 1, y]) << 4)
                    | (np.int64(s[x - 1, y + 1]) << 5)
                    | (np.int64(s[x, y + 1]) << 6)
                    | (np.int64(s[x + 1, y + 1]) << 7))
            if lut[code]:
                s[x, y] = 1 - s[x, y]
                flips += 1
            else:
                live[kept] = p
                kept += 1
        n_live = kept
        if flips == 0:
            break
    return s[1:-1, 1:-1].copy(), live[:n_live].copy()


@njit(cache=True, nogil=True)
def _splits_off(warped, x, y, x0, x1, y0, y1, stamp, tag, queue) -> bool:
    """True if, with ``(x, y)`` set to membrane, its cell 8-neighbours span >= 2 components."""
    width, height = warped.shape
    seeds_x = np.empty(8, dtype=np.int64)
    seeds_y = np.empty(8, dtype=np.int64)
    n_seeds = 0
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            u = x + dx
            v = y + dy
            if (dx != 0 or dy != 0) and 0 <= u < width and 0 <= v < height and warped[u, v] != 0:
                seeds_x[n_seeds] = u
                seeds_y[n_seeds] = v
                n_seeds += 1
    if n_seeds <= 1:
        return False
    stamp[seeds_x[0], seeds_y[0]] = tag
    queue[0] = seeds_x[0] * height + seeds_y[0]
    reached = 1
    head = 0
    tail = 1
    while head < tail:
        p = queue[head]
        head += 1
        px = p // height
        py = p - px * height
        for k in range(4):
            u = px + (-1 if k == 0 else (1 if k == 2 else 0))
            v = py + (-1 if k == 1 else (1 if k == 3 else 0))
            if x0 <= u <= x1 and y0 <= v <= y1 and (u != x or v != y) \
                    and warped[u, v] != 0 and stamp[u, v] != tag:
                stamp[u, v] = tag
                queue[tail] = u * height + v
                tail += 1
                if abs(u - x) <= 1 and abs(v - y) <= 1:  # one of the seeds
                    reached += 1
                    if reached == n_seeds:
                        return False
    return True


@njit(cache=True, nogil=True)
def _classify_t(warped: np.ndarray, labels: np.ndarray, remaining: np.ndarray, radius: int) -> np.ndarray:
    """Class counts (see ``CLASS_NAMES``) of the remaining mismatches, ``(X, Y)`` layout."""
    width, height = warped.shape
    use = radius if (radius >= 1 and radius <= width and radius <= height) else -1
    counts = np.zeros(6, dtype=np.int64)
    stamp = np.zeros((width, height), dtype=np.int64)
    queue = np.empty(width * height, dtype=np.int64)
    uniq = np.empty(8, dtype=np.int64)
    tag = 0
    for m in range(remaining.shape[0]):
        p = remaining[m]
        x = p // height
        y = p - x * height
        c = labels[x, y]
        n_u = 0
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                u = x + dx
                v = y + dy
                if (dx != 0 or dy != 0) and 0 <= u < width and 0 <= v < height:
                    lab = labels[u, v]
                    seen = False
                    for t in range(n_u):
                        if uniq[t] == lab:
                            seen = True
                    if not seen:
                        uniq[n_u] = lab
                        n_u += 1
        if n_u == 1 and uniq[0] == 0:
            counts[_OBJ_DEL if c != 0 else _OBJ_ADD] += 1
        elif n_u == 1:
            counts[_HOLE_ADD if c != 0 else _HOLE_DEL] += 1
        elif n_u == 2:
            if c == 0:
                counts[_HOLE_ADD] += 1
            else:
                if use == -1:
                    x0, x1, y0, y1 = 0, width - 1, 0, height - 1
                else:
                    x0, x1 = max(0, x - use), min(width - 1, x + use)
                    y0, y1 = max(0, y - use), min(height - 1, y + use)
                tag += 1
                if _splits_off(warped, x, y, x0, x1, y0, y1, stamp, tag, queue):
                    counts[_SPLIT] += 1
                else:
                    counts[_HOLE_DEL] += 1
        else:
            counts[_MERGE if c == 0 else _SPLIT] += 1
    return counts


class WarpResult(NamedTuple):
    """Warped GT (``(Y, X)`` bool) and its remaining mismatches (``(k, 2)`` array of ``(y, x)``)."""

    warped: np.ndarray
    mismatches: np.ndarray


def warp_gt(gt_cells: np.ndarray, proposal: np.ndarray, threshold: float) -> WarpResult:
    """Warp the binary GT toward ``proposal > threshold`` by simple-point flips (2D)."""
    gt = np.asarray(gt_cells)
    prop = np.asarray(proposal, dtype=np.float64)
    if gt.ndim != 2 or gt.shape != prop.shape:
        raise ValueError(f"expected 2D gt and proposal of the same shape, got {gt.shape} and {prop.shape}")
    source_t = np.ascontiguousarray((gt != 0).T, dtype=np.uint8)
    prop_t = np.ascontiguousarray(prop.T)
    target_t = (prop_t > np.float64(threshold)).astype(np.uint8)
    warped_t, remaining = _warp_t(source_t, target_t, prop_t, float(threshold), SIMPLE_LUT)
    height = gt.shape[0]
    yx = np.stack([remaining % height, remaining // height], axis=1) if remaining.size else np.zeros((0, 2), np.int64)
    return WarpResult(np.ascontiguousarray(warped_t.T).astype(bool), yx)


def classify_mismatches(warped: np.ndarray, mismatches: np.ndarray, radius: int = DEFAULT_RADIUS) -> dict[str, int]:
    """Count the remaining mismatches of a warped GT per class (see module docstring)."""
    w = np.asarray(warped)
    yx = np.asarray(mismatches, dtype=np.int64).reshape(-1, 2)
    warped_t = np.ascontiguousarray(w.T != 0, dtype=np.uint8)
    labels_t, _ = label4(warped_t)
    flat = yx[:, 1] * w.shape[0] + yx[:, 0]
    counts = _classify_t(warped_t, labels_t, np.ascontiguousarray(flat), int(radius))
    return {name: int(v) for name, v in zip(CLASS_NAMES, counts)}


def warping_counts_t(gt_t: np.ndarray, prop_t: np.ndarray, threshold: float, radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """:func:`warping_counts` on inputs already in ``(X, Y)`` layout (uint8 GT, float64 proposal)."""
    target_t = (prop_t > np.float64(threshold)).astype(np.uint8)
    warped_t, remaining = _warp_t(gt_t, target_t, prop_t, float(threshold), SIMPLE_LUT)
    out = np.zeros(7, dtype=np.int64)
    out[0] = remaining.size
    if remaining.size:
        labels_t, _ = label4(warped_t)
        out[1:] = _classify_t(warped_t, labels_t, remaining, int(radius))
    return out


def warping_counts(gt_cells: np.ndarray, proposal: np.ndarray, threshold: float, radius: int = DEFAULT_RADIUS) -> np.ndarray:
    """``int64[7]``: remaining mismatches, then the class counts in ``CLASS_NAMES`` order."""
    gt = np.asarray(gt_cells)
    prop = np.asarray(proposal, dtype=np.float64)
    if gt.ndim != 2 or gt.shape != prop.shape:
        raise ValueError(f"expected 2D gt and proposal of the same shape, got {gt.shape} and {prop.shape}")
    gt_t = np.ascontiguousarray((gt != 0).T, dtype=np.uint8)
    return warping_counts_t(gt_t, np.ascontiguousarray(prop.T), threshold, radius)


def leaderboard_error(split_merge: np.ndarray, n_pixels: int) -> tuple[float, int]:
    """``(min error, index of the first minimum)`` of split+merge counts per threshold."""
    errors = np.asarray(split_merge, dtype=np.float64) / float(n_pixels)
    best, best_k = np.inf, 0
    for k, err in enumerate(errors):
        if err < best:
            best, best_k = float(err), k
    return best, best_k


def jain_error(remaining_per_slice: np.ndarray, pixels_per_slice: int) -> float:
    """Classic warping error: remaining mismatches / (W·H), averaged over slices."""
    remaining = np.asarray(remaining_per_slice, dtype=np.float64)
    return float(np.mean(remaining / float(pixels_per_slice)))
