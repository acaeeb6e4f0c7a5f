"""Warping: simple-point passes in confidence order, and the split/merge classification.

Coordinates are ``(y, x)``; "column-major" lists pixels with ``x`` outer, ``y`` inner.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.metrics.topology import SIMPLE_LUT, neighbourhood_code
from pipeline.metrics.warping import (
    classify_mismatches,
    jain_error,
    leaderboard_error,
    warp_gt,
    warping_counts,
)


def framed_cell(height: int, width: int) -> np.ndarray:
    """One cell filling the image except a 1-px membrane frame."""
    gt = np.zeros((height, width), bool)
    gt[1:-1, 1:-1] = True
    return gt


def test_identical_binary_maps_have_no_mismatch():
    gt = framed_cell(6, 7)
    assert warping_counts(gt, gt.astype(float), 0.5).tolist() == [0] * 7


def test_line_across_a_cell_leaves_one_split_pixel():
    # GT: a 3x7 cell in a frame; proposal: membrane column x = 4 across it.
    gt = framed_cell(5, 9)
    prop = gt.astype(float)
    prop[1:4, 4] = 0.0
    # Mismatches (1,4), (2,4), (3,4), all keys |0 - th| equal -> column-major order.
    # (1,4): cells W, SW, S, SE, E form one 4-component; membrane NW, N, NE one
    #        8-component -> simple, flipped.  (2,4): N is membrane now, the cells around
    #        are connected through S = (3,4) -> simple, flipped.  (3,4): cells {NW, W} and
    #        {NE, E} are two 4-components -> not simple; the next pass flips nothing.
    result = warp_gt(gt, prop, 0.5)
    assert result.mismatches.tolist() == [[3, 4]]
    # classification: neighbours carry labels {0, A}; removing the pixel in the 41x41
    # window disconnects left from right -> more than two labels -> split
    counts = classify_mismatches(result.warped, result.mismatches)
    assert counts["split"] == 1 and sum(counts.values()) == 1
    assert warping_counts(gt, prop, 0.5).tolist() == [1, 0, 1, 0, 0, 0, 0]


def test_confidence_order_decides_which_pixel_remains():
    gt = framed_cell(5, 9)
    prop = gt.astype(float)
    # most confident mismatch last in column-major order: sorting visits (3,4) first,
    # then (2,4); (1,4) is left with cells {W, SW} and {E, SE}: the split pixel moves up
    prop[1:4, 4] = [0.4, 0.2, 0.0]
    assert warp_gt(gt, prop, 0.5).mismatches.tolist() == [[1, 4]]
    prop[1:4, 4] = [0.0, 0.2, 0.4]
    assert warp_gt(gt, prop, 0.5).mismatches.tolist() == [[3, 4]]


def test_column_major_listing_breaks_ties():
    gt = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
    prop = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 1]], float)
    # Binary proposal: every key is 0.5, so the column-major listing is the visiting order:
    # (1,0), (1,1), (2,1), (0,2), (1,2).
    # (1,0): cells {N, NE, E} one component, membrane (outside + S, SE) one -> flip to 0.
    # (1,1): cells {NW, N} and {E, SE} -> T4 = 2, kept.
    # (2,1): cells {N, NE, E} one component, membrane {NW, W, outside} one -> flip to 1.
    # (0,2): cells {W, SW, S}, membrane = outside -> flip to 1.
    # (1,2): cells {NW, N, W, SW, S}, membrane = outside -> flip to 0.
    # Pass 2: (1,1) now has cells {NW, N, NE} and {S, SE} -> still not simple; stop.
    # (A row-major listing would visit (0,2) and (1,2) earlier and leave (1,2) instead.)
    result = warp_gt(gt, prop, 0.5)
    assert result.warped.astype(int).tolist() == [[1, 1, 1], [0, 1, 0], [0, 1, 1]]
    assert result.mismatches.tolist() == [[1, 1]]
    # the image is smaller than the radius, so the whole image is the window: split
    assert classify_mismatches(result.warped, result.mismatches)["split"] == 1


def test_gap_in_a_membrane_is_a_merge():
    gt = np.ones((5, 7), bool)
    gt[:, 3] = False  # two cells separated by a 1-px membrane
    prop = gt.astype(float)
    prop[2, 3] = 1.0  # the proposal opens a 1-px gap
    # (2,3) touches both cells (labels A, B) and membrane (N, S): 3 labels, c = 0 -> merge
    assert warping_counts(gt, prop, 0.5).tolist() == [1, 1, 0, 0, 0, 0, 0]


def test_isolated_dot_is_a_hole_addition_not_a_split():
    gt = np.ones((7, 7), bool)
    prop = gt.astype(float)
    prop[3, 3] = 0.0
    counts = warping_counts(gt, prop, 0.5)
    assert counts[0] == 1 and counts[3] == 1  # remaining 1, hole addition


def test_neighbours_outside_the_image_are_skipped_not_membrane():
    # one-row image, one cell; the proposal cuts it in the middle. (0,2) is not simple
    # (W and E are two 4-components of its neighbourhood) and remains. Its in-image
    # neighbours W, E carry the single label A, so the Java getNeighborhood gives {A}:
    # hole addition. Counting the outside as label 0 would give {A, 0} and a split.
    gt = np.ones((1, 5), bool)
    prop = np.array([[1, 1, 0, 1, 1]], float)
    assert warping_counts(gt, prop, 0.5).tolist() == [1, 0, 0, 1, 0, 0, 0]


def test_reductions():
    assert leaderboard_error(np.array([3, 1, 1, 2]), 100) == (0.01, 1)  # first minimum
    assert jain_error(np.array([2, 4]), 100) == pytest.approx(0.03)


def _reference_warp(gt: np.ndarray, prop: np.ndarray, th: float) -> tuple[np.ndarray, list]:
    """Literal transcription: re-list, re-sort and re-check every pass until no change."""
    src = gt.astype(bool).copy()
    target = prop > th
    height, width = src.shape
    order = [(y, x) for x in range(width) for y in range(height)]
    before = None
    while True:
        mism = [p for p in order if src[p] != target[p]]
        if not mism or len(mism) == before:
            break
        before = len(mism)
        mism.sort(key=lambda p: -np.float32(abs(prop[p] - th)))  # stable
        for y, x in mism:
            if SIMPLE_LUT[neighbourhood_code(src, y, x)]:
                src[y, x] = not src[y, x]
    return src, sorted(mism)


@settings(max_examples=120, deadline=None)
@given(
    arrays(bool, (5, 6), elements=st.booleans()),
    arrays(np.float64, (5, 6), elements=st.sampled_from([0.0, 0.2, 0.45, 0.55, 0.8, 1.0])),
)
def test_matches_reference_transcription(gt, prop):
    warped, remaining = _reference_warp(gt, prop, 0.5)
    result = warp_gt(gt, prop, 0.5)
    assert result.warped.tolist() == warped.tolist()
    assert sorted(map(tuple, result.mismatches.tolist())) == remaining


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="expected 2D gt and proposal of the same shape"):
        warping_counts(np.zeros((2, 2), bool), np.zeros((2, 3)), 0.5)


def _reference_classify(warped: np.ndarray, mismatches: list, radius: int = 20) -> dict[str, int]:
    """Literal transcription of the classification: relabel a copied window per pixel."""
    from scipy import ndimage as ndi

    four = ndi.generate_binary_structure(2, 1)
    height, width = warped.shape
    lab = ndi.label(warped, four)[0]
    use = radius if 1 <= radius <= width and radius <= height else -1
    out = dict.fromkeys(["merge", "split", "hole_addition", "hole_deletion", "object_addition", "object_deletion"], 0)

    def around(img, y, x):
        return {img[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if (dy or dx) and 0 <= y + dy < img.shape[0] and 0 <= x + dx < img.shape[1]}

    for y, x in mismatches:
        u, c = around(lab, y, x), lab[y, x]
        if u == {0}:
            out["object_deletion" if c else "object_addition"] += 1
        elif len(u) == 1:
            out["hole_addition" if c else "hole_deletion"] += 1
        elif len(u) == 2 and c == 0:
            out["hole_addition"] += 1
        elif len(u) == 2:
            if use == -1:
                win, cy, cx = warped.copy(), y, x
            else:
                win = np.zeros((2 * use + 1, 2 * use + 1), bool)  # zero outside the image
                for j in range(-use, use + 1):
                    for i in range(-use, use + 1):
                        if 0 <= y + j < height and 0 <= x + i < width:
                            win[j + use, i + use] = warped[y + j, x + i]
                cy = cx = use
            win[cy, cx] = False
            out["split" if len(around(ndi.label(win, four)[0], cy, cx)) > 2 else "hole_deletion"] += 1
        else:
            out["merge" if c == 0 else "split"] += 1
    return out


@pytest.mark.parametrize(("noise", "threshold"), [(1.2, 0.35), (1.2, 0.6), (0.6, 0.5)])
def test_classification_matches_reference_on_noisy_proposals(noise, threshold):
    from scipy import ndimage as ndi

    from .voronoi import voronoi_gt

    t = voronoi_gt(shape=(72, 80), n_cells=12, min_dist=14, seed=7)
    rng = np.random.default_rng(2)
    prop = ndi.gaussian_filter(t.cell_mask + rng.normal(0, noise, t.gt.shape), 0.6)
    prop = (prop - prop.min()) / (prop.max() - prop.min())
    result = warp_gt(t.cell_mask, prop, threshold)
    assert len(result.mismatches) > 20
    got = classify_mismatches(result.warped, result.mismatches)
    assert got == _reference_classify(result.warped, result.mismatches.tolist())
    # radius 0 (and radii larger than the image) fall back to the whole image, as in Java
    assert classify_mismatches(result.warped, result.mismatches, radius=0) == \
        _reference_classify(result.warped, result.mismatches.tolist(), radius=0)
