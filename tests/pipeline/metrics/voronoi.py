"""Synthetic EM-like ground truth: a seeded Voronoi tessellation with 3-px membranes.

Also builds the perturbed proposals of the spec's sanity cases (merge gap, split line,
1-px translation, thicker membranes, isolated dots). Everything is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CROSS = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Tessellation:
    """``gt``: uint8 0 (membrane) / 255 (cell); ``cells``: Voronoi id per pixel (0..k-1);
    ``membrane``: bool membrane mask; ``instances``: 4-connected cell labels (0 = membrane)."""

    gt: np.ndarray
    cells: np.ndarray
    membrane: np.ndarray
    instances: np.ndarray

    @property
    def cell_mask(self) -> np.ndarray:
        return ~self.membrane


def _seeds(shape: tuple[int, int], n: int, min_dist: float, rng: np.random.Generator) -> np.ndarray:
    points: list[tuple[float, float]] = []
    tries = 0
    while len(points) < n and tries < 20000:
        tries += 1
        p = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in points):
            points.append(p)
    return np.array(points)


def voronoi_gt(shape: tuple[int, int] = (160, 160), n_cells: int = 30, min_dist: float = 20.0, seed: int = 0) -> Tessellation:
    """Voronoi tessellation whose boundaries are drawn as 3-px-wide membranes."""
    rng = np.random.default_rng(seed)
    pts = _seeds(shape, n_cells, min_dist, rng)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    d2 = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    cells = np.argmin(d2, axis=-1).astype(np.int32)
    line = np.zeros(shape, dtype=bool)  # 1-px boundary: the pixel before a label change
    line[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    line[:-1, :] |= cells[:-1, :] != cells[1:, :]
    membrane = ndi.binary_dilation(line, structure=CROSS)  # 3 px across
    instances, count = ndi.label(~membrane, structure=CROSS)
    present = np.unique(cells[~membrane]).size
    if count != present:
        raise RuntimeError(f"expected one 4-component per Voronoi cell, got {count} for {present}")
    gt = np.where(membrane, 0, 255).astype(np.uint8)
    return Tessellation(gt, cells, membrane, instances.astype(np.int32))


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a mask by (dy, dx) >= 0, repeating the first row / column at the edge."""
    out = mask.copy()
    if dy:
        out[dy:] = mask[:-dy]
    if dx:
        out[:, dx:] = out[:, :-dx].copy()
    return out


def merge_gap(t: Tessellation, radius: int = 5) -> np.ndarray:
    """Cell mask with a ~2·radius-px gap cut through one membrane between two cells."""
    line = np.zeros(t.cells.shape, dtype=bool)
    line[:, :-1] |= t.cells[:, :-1] != t.cells[:, 1:]
    ys, xs = np.nonzero(line)
    best = None
    for y, x in zip(ys, xs):
        win = t.cells[max(0, y - radius - 3) : y + radius + 4, max(0, x - radius - 3) : x + radius + 4]
        if win.shape == (2 * radius + 7, 2 * radius + 7) and np.unique(win).size == 2:
            best = (y, x)
            break
    if best is None:
        raise RuntimeError("expected a membrane between exactly two cells, found none")
    yy, xx = np.mgrid[0 : t.cells.shape[0], 0 : t.cells.shape[1]]
    disk = (yy - best[0]) ** 2 + (xx - best[1]) ** 2 <= radius**2
    return t.cell_mask | disk


def split_line(t: Tessellation) -> np.ndarray:
    """Cell mask with a 3-px membrane line drawn across the largest cell."""
    sizes = np.bincount(t.instances.ravel())
    sizes[0] = 0
    k = int(np.argmax(sizes))
    cy = int(round(np.nonzero(t.instances == k)[0].mean()))
    out = t.cell_mask.copy()
    band = np.zeros_like(out)
    band[cy - 1 : cy + 2] = True
    out[band & (t.instances == k)] = False
    return out


def translate(t: Tessellation) -> np.ndarray:
    """Cell mask with every membrane moved one pixel to the right."""
    return _shift(t.cell_mask, 0, 1)


def thicker(t: Tessellation) -> np.ndarray:
    """Cell mask whose membranes are one pixel thicker (grown down and right)."""
    m = t.membrane
    return ~(m | _shift(m, 1, 0) | _shift(m, 0, 1))


def dots(t: Tessellation, n: int = 6) -> np.ndarray:
    """Cell mask with isolated 1-px membrane dots deep inside ``n`` cells."""
    depth = ndi.distance_transform_cdt(t.cell_mask, metric="chessboard")
    out = t.cell_mask.copy()
    for k in range(1, n + 1):
        ys, xs = np.nonzero((t.instances == k) & (depth >= 4))
        if ys.size:
            out[ys[ys.size // 2], xs[ys.size // 2]] = False
    return out
