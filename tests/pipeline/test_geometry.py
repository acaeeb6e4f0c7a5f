"""`Coordinate` and `Roi`: element-wise arithmetic, ROI algebra (properties), validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import Coordinate, Roi

ints = st.integers(-20, 20)
sizes = st.integers(0, 15)


@st.composite
def rois(draw, dims: int = 3) -> Roi:
    return Roi(tuple(draw(ints) for _ in range(dims)), tuple(draw(sizes) for _ in range(dims)))


def voxels(roi: Roi) -> set[tuple[int, ...]]:
    return {tuple(int(b + i) for b, i in zip(roi.begin, p)) for p in np.ndindex(*roi.shape)}


def test_coordinate_arithmetic_is_elementwise() -> None:
    c = Coordinate(4, 8, 12)
    assert c + 1 == (5, 9, 13) and c - (1, 2, 3) == (3, 6, 9)
    assert c * 2 == (8, 16, 24) and c // (4, 4, 5) == (1, 2, 2) and 10 - c == (6, 2, -2)
    assert isinstance(c + 1, Coordinate) and Coordinate((1, 2)) == Coordinate(1, 2)
    assert hash(c) == hash((4, 8, 12)) and {c: 1}[(4, 8, 12)] == 1


def test_coordinate_comparisons_are_all_axes() -> None:
    a, b = Coordinate(1, 5), Coordinate(2, 4)
    assert not a < b and not b < a and a <= (1, 5) and a < (2, 6) and (2, 6) > a


def test_coordinate_refuses_bad_input() -> None:
    with pytest.raises(TypeError, match="integer"):
        Coordinate(1.5, 2)
    with pytest.raises(ValueError, match="2 dimensions"):
        Coordinate(1, 2) + (1, 2, 3)


def test_roi_validates_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="non-negative shape"):
        Roi((0, 0), (1, -1))
    with pytest.raises(ValueError, match="one dimensionality"):
        Roi((0, 0, 0), (1, 1))


def test_roi_basics() -> None:
    r = Roi((1, 2, 3), (4, 5, 6))
    assert r.begin == (1, 2, 3) and r.end == (5, 7, 9) and r.size == 120 and not r.empty
    assert r.grow((1, 0, 0), (0, 2, 0)) == Roi((0, 2, 3), (5, 7, 6))
    assert r.to_slices() == (slice(1, 5), slice(2, 7), slice(3, 9))
    assert r.to_slices(relative_to=Roi((1, 1, 1), (9, 9, 9))) == (slice(0, 4), slice(1, 6), slice(2, 8))
    assert Roi.from_slices(r.to_slices()) == r
    assert Roi((0, 0), (3, 0)).empty
    with pytest.raises(ValueError, match="negative slice start"):
        r.to_slices(relative_to=(2, 2, 2))


def test_snap_to_grid_modes() -> None:
    r = Roi((3, 5), (6, 7))  # [3, 9) x [5, 12)
    assert r.snap_to_grid(4) == Roi((0, 4), (12, 8))
    assert r.snap_to_grid(4, "shrink") == Roi((4, 8), (4, 4))
    assert r.snap_to_grid((2, 4), "closest") == Roi((4, 4), (6, 8))


@settings(max_examples=60, deadline=None)
@given(rois(), rois())
def test_intersect_is_the_set_intersection(a: Roi, b: Roi) -> None:
    both = a.intersect(b)
    assert voxels(both) == voxels(a) & voxels(b)
    assert both == b.intersect(a) or (both.empty and b.intersect(a).empty)
    assert both.empty or (a.contains(both) and b.contains(both))


@settings(max_examples=60, deadline=None)
@given(rois(), st.tuples(sizes, sizes, sizes), st.tuples(sizes, sizes, sizes))
def test_grow_contains_and_shifts(r: Roi, lo, hi) -> None:
    g = r.grow(lo, hi)
    assert g.contains(r) and g.begin == r.begin - lo and g.end == r.end + hi
    assert g.grow(-Coordinate(lo), -Coordinate(hi)) == r


@settings(max_examples=60, deadline=None)
@given(rois(), st.tuples(*[st.integers(1, 7)] * 3))
def test_snap_grow_contains_and_shrink_is_contained(r: Roi, grid) -> None:
    grown, shrunk = r.snap_to_grid(grid), r.snap_to_grid(grid, "shrink")
    assert grown.contains(r)
    assert shrunk.empty or r.contains(shrunk)
    for roi in (grown, shrunk):
        if not roi.empty:
            assert all(b % g == 0 and e % g == 0 for b, e, g in zip(roi.begin, roi.end, grid))


@settings(max_examples=40, deadline=None)
@given(rois(), rois())
def test_to_slices_selects_the_roi(outer: Roi, inner: Roi) -> None:
    inner = inner.intersect(outer)
    if inner.empty:
        return
    data = np.arange(outer.size).reshape(outer.shape)
    picked = data[inner.to_slices(relative_to=outer)]
    assert picked.shape == tuple(inner.shape)
    first = tuple(b - o for b, o in zip(inner.begin, outer.begin))
    assert picked.flat[0] == data[first]


def test_roi_is_immutable_and_hashable() -> None:
    r = Roi((0, 0), (2, 2))
    with pytest.raises(AttributeError):
        r.offset = Coordinate(1, 1)  # type: ignore[misc]
    assert len({r, Roi((0, 0), (2, 2))}) == 1
