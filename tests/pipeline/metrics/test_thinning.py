"""Vincent–Soille thinning: crafted ties derived by hand, and a reference on random images.

Notation: ``A``/``B`` are the basins (4-connected interior regions), numbered in
column-major order of their first pixel; 0 marks a dam. Coordinates are ``(y, x)``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from hypothesis import strategies as st

from pipeline.metrics.thinning import thin_boundaries


def test_odd_gap_gets_its_middle_pixel_as_dam():
    # A . . . B: queue = x1 (next to A), x3 (next to B). x1 -> A and queues x2;
    # x3 -> B (its left neighbour x2 is only INQUEUE); x2 then sees A and B -> dam.
    labels, n = thin_boundaries(np.array([[1, 0, 0, 0, 1]], bool))
    assert n == 2 and labels.tolist() == [[1, 1, 0, 2, 2]]


def test_even_gap_dam_goes_to_the_second_pixel_of_the_pair():
    # A . . B: both gap pixels are queued (x1 next to A, x2 next to B), x1 first.
    # x1 takes A (x2 is only INQUEUE); x2 sees A (popped) and B -> dam.
    # The textbook algorithm (distance levels) would give A A B B without a dam.
    labels, _ = thin_boundaries(np.array([[1, 0, 0, 1]], bool))
    assert labels.tolist() == [[1, 1, 0, 2]]
    # vertical pair: y1 is scanned before y2 (same column), so the dam is y2
    labels, _ = thin_boundaries(np.array([[1], [0], [0], [1]], bool))
    assert labels.ravel().tolist() == [1, 1, 0, 2]


def test_column_major_order_decides_the_contested_corner():
    # interior: A at (2, 0), B at (1, 2)
    cells = np.array([
        [0, 0, 0],
        [0, 0, 1],
        [1, 0, 0],
    ], bool)
    # Column-major seeding (x outer, y inner): (1,0) [A below], (1,1) [B right],
    # (2,1) [A left], (0,2) [B below], (2,2) [B above]; (0,0), (0,1) have no basin neighbour.
    # Pop (1,0): up (0,0) MASK -> queued; down A -> A.  Pop (1,1): left (1,0) = A -> A;
    # up (0,1) MASK -> queued; right B -> dam.  Pop (2,1): A.  Pop (0,2): B.
    # Pop (2,2): left (2,1) = A -> A, up B -> dam.  Pop (0,0): right (0,1) is INQUEUE,
    # down (1,0) = A -> A.  Pop (0,1): left (0,0) = A -> A, right (0,2) = B -> dam.
    # A row-major scan queues (0,1) before (0,0) and would make (0,0) the dam instead.
    labels, n = thin_boundaries(cells)
    assert n == 2
    assert labels.tolist() == [
        [1, 0, 2],
        [1, 0, 2],
        [1, 1, 0],
    ]


def test_dam_only_neighbours_make_a_dam_and_no_interior_gives_one_basin():
    labels, n = thin_boundaries(np.zeros((2, 3), bool))
    assert n == 1 and (labels == 1).all()  # level 255 becomes a single new basin
    labels, n = thin_boundaries(np.ones((2, 3), bool))
    assert n == 1 and (labels == 1).all()


def test_isolated_boundary_dot_joins_its_basin():
    cells = np.ones((5, 5), bool)
    cells[2, 2] = False
    labels, n = thin_boundaries(cells)
    assert n == 1 and (labels == 1).all()


def _reference(cells: np.ndarray) -> np.ndarray:
    """Plain-Python transcription of the immersion (column-major lists, FIFO queue)."""
    height, width = cells.shape
    mask, wshed, init, inqueue = -2, 0, -1, -3
    lab = np.full((height, width), init)
    order = [(y, x) for x in range(width) for y in range(height)]
    nbrs = lambda y, x: [(y, x - 1), (y - 1, x), (y, x + 1), (y + 1, x)]  # noqa: E731
    inside = lambda y, x: 0 <= y < height and 0 <= x < width  # noqa: E731
    current, flag = 0, False
    for level_is_boundary in (False, True):
        pts = [p for p in order if (not cells[p]) == level_is_boundary]
        fifo: deque = deque()
        for p in pts:
            lab[p] = mask
            if any(inside(*q) and lab[q] >= wshed for q in nbrs(*p)):
                fifo.append(p)
                lab[p] = inqueue
        while fifo:
            p = fifo.popleft()
            for q in nbrs(*p):
                if not inside(*q):
                    continue
                if lab[q] > 0:
                    if lab[p] == inqueue or (lab[p] == wshed and flag):
                        lab[p] = lab[q]
                    elif lab[p] > 0 and lab[p] != lab[q]:
                        lab[p], flag = wshed, False
                elif lab[q] == wshed:
                    if lab[p] == inqueue:
                        lab[p], flag = wshed, True
                elif lab[q] == mask:
                    lab[q] = inqueue
                    fifo.append(q)
        for p in pts:
            if lab[p] == mask:
                current += 1
                lab[p] = current
                fifo = deque([p])
                while fifo:
                    r = fifo.popleft()
                    for q in nbrs(*r):
                        if inside(*q) and lab[q] == mask:
                            lab[q] = current
                            fifo.append(q)
    return lab


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.booleans()))
def test_matches_reference_transcription(cells):
    labels, _ = thin_boundaries(cells)
    assert labels.tolist() == _reference(cells).tolist()


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="expected a 2D mask"):
        thin_boundaries(np.zeros((2, 2, 2), bool))
