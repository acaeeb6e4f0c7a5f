"""Simple points for the (4, 8) digital topology: cells 4-connected, membrane 8-connected.

A pixel ``x`` is *simple* when flipping it (cell <-> membrane) changes no topology. On its
3×3 neighbourhood ``N8(x)`` (``N8*(x)`` = the 8 neighbours without ``x``), with ``X`` the
cell pixels and ``X̄`` the membrane pixels (pixels outside the image count as membrane),
Bertrand & Malandain's topological numbers are

* ``T4(x, X)``: the number of 4-connected components of ``X ∩ N8*(x)`` that contain a
  4-neighbour of ``x`` (i.e. are 4-adjacent to ``x``);
* ``T8(x, X̄)``: the number of 8-connected components of ``X̄ ∩ N8*(x)`` (in 2D every
  pixel of ``N8*`` is 8-adjacent to ``x``).

``x`` is simple iff ``T4(x, X) = 1`` and ``T8(x, X̄) = 1``. Neither number depends on the
value of ``x`` itself, so the test is a lookup table over the 256 configurations of the
8 neighbours, built once at import. (The Java ``WarpingError`` embeds the patch in a
3×3×3 cube and runs the 3D (26, 6) test on the complement; it accepts exactly the same
256 configurations.)

Neighbour bit order of the table index (``dx`` = column offset, ``dy`` = row offset)::

    bit0 (-1,-1)  bit1 (0,-1)  bit2 (+1,-1)
    bit3 (-1, 0)      x        bit4 (+1, 0)
    bit5 (-1,+1)  bit6 (0,+1)  bit7 (+1,+1)
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEIGHBOUR_OFFSETS", "SIMPLE_LUT", "is_simple", "neighbourhood_code", "t4", "t8"]

#: ``(dy, dx)`` of bits 0..7 of a neighbourhood code.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)
_FOUR = {(-1, 0), (0, -1), (0, 1), (1, 0)}


def _components(members: set[tuple[int, int]], eight: bool) -> list[set[tuple[int, int]]]:
    """Connected components of a set of ``(dy, dx)`` offsets (4- or 8-adjacency)."""
    remaining = set(members)
    comps: list[set[tuple[int, int]]] = []
    while remaining:
        seed = remaining.pop()
        comp = {seed}
        stack = [seed]
        while stack:
            y, x = stack.pop()
            for other in list(remaining):
                dy, dx = abs(other[0] - y), abs(other[1] - x)
                if (dy + dx == 1) or (eight and max(dy, dx) == 1):
                    remaining.discard(other)
                    comp.add(other)
                    stack.append(other)
        comps.append(comp)
    return comps


def _members(code: int, value: int) -> set[tuple[int, int]]:
    return {off for bit, off in enumerate(NEIGHBOUR_OFFSETS) if ((code >> bit) & 1) == value}


def t4(code: int) -> int:
    """``T4(x, X)`` of a neighbourhood code (cells = set bits)."""
    return sum(1 for comp in _components(_members(code, 1), eight=False) if comp & _FOUR)


def t8(code: int) -> int:
    """``T8(x, X̄)`` of a neighbourhood code (membrane = cleared bits)."""
    return len(_components(_members(code, 0), eight=True))


def _build_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.bool_)
    for code in range(256):
        lut[code] = t4(code) == 1 and t8(code) == 1
    return lut


#: ``SIMPLE_LUT[code]`` is True when a pixel with that neighbourhood is simple.
SIMPLE_LUT: np.ndarray = _build_lut()
SIMPLE_LUT.setflags(write=False)


def neighbourhood_code(cells: np.ndarray, y: int, x: int) -> int:
    """Neighbourhood code of pixel ``(y, x)`` of a 2D cell mask (outside = membrane)."""
    mask = np.asarray(cells)
    height, width = mask.shape
    code = 0
    for bit, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        yy, xx = y + dy, x + dx
        if 0 <= yy < height and 0 <= xx < width and mask[yy, xx]:
            code |= 1 << bit
    return code


def is_simple(cells: np.ndarray, y: int, x: int) -> bool:
    """Whether pixel ``(y, x)`` of a 2D cell mask is simple (see module docstring)."""
    return bool(SIMPLE_LUT[neighbourhood_code(cells, y, x)])
