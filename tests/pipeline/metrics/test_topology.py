"""Simple-point lookup table against a brute-force topology check on all 256 neighbourhoods.

Brute-force definition used here (independent of T4/T8): put the 3×3 neighbourhood in
the middle of a 5×5 patch whose outer ring is a uniform *frame*, once all membrane and
once all cell (the two extreme ways the rest of the image can connect the neighbours).
Flipping the centre is topology-preserving when, for both frames, it changes neither the
number of 4-connected cell components nor the number of 8-connected membrane
components of the patch. The pixel is simple exactly when the flip is topology-preserving.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.metrics.topology import NEIGHBOUR_OFFSETS, SIMPLE_LUT, is_simple, neighbourhood_code, t4, t8

FOUR = ndi.generate_binary_structure(2, 1)
EIGHT = np.ones((3, 3), bool)


def _patch(code: int, frame: bool) -> np.ndarray:
    patch = np.full((5, 5), frame)
    for bit, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        patch[2 + dy, 2 + dx] = bool((code >> bit) & 1)
    return patch


def _topology(patch: np.ndarray) -> tuple[int, int]:
    return ndi.label(patch, FOUR)[1], ndi.label(~patch, EIGHT)[1]


def brute_force_simple(code: int) -> bool:
    for frame in (False, True):
        cell, membrane = _patch(code, frame), _patch(code, frame)
        cell[2, 2], membrane[2, 2] = True, False
        if _topology(cell) != _topology(membrane):
            return False
    return True


@pytest.mark.parametrize("code", range(256))
def test_lut_matches_brute_force(code):
    assert bool(SIMPLE_LUT[code]) == brute_force_simple(code)


def test_known_configurations():
    assert not SIMPLE_LUT[0]  # isolated pixel: adding it creates an object
    assert not SIMPLE_LUT[255]  # interior pixel: removing it creates a hole
    north = 1 << 1
    assert SIMPLE_LUT[north]  # end of a line
    south = 1 << 6
    assert not SIMPLE_LUT[north | south]  # middle of a 1-px line: removal splits
    assert t4(north | south) == 2 and t8(north | south) == 2
    assert t4(255) == 1 and t8(255) == 0


def test_outside_the_image_is_membrane():
    cells = np.ones((3, 3), bool)
    assert neighbourhood_code(cells, 0, 0) == (1 << 4) | (1 << 6) | (1 << 7)
    assert is_simple(cells, 0, 0)  # a corner pixel can be removed
    assert not is_simple(cells, 1, 1)  # the centre cannot (it would become a hole)
