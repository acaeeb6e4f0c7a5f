"""The border weight map of the U-Net paper (Ronneberger et al. 2015, Eq. 2), exact and fast.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

* ``d1``, ``d2``: Euclidean distances from pixel ``x`` to the nearest and the second-nearest
  *cell*. Cells are the 4-connected components of ``labels > 0`` for binary labels (ISBI:
  0 = membrane, 255 = cell; in 3D 6-connected, i.e. face-connected), or each non-zero id for
  instance labels (``instances=True``; the id's voxels form one cell even if disconnected).
* The border term is added on background (label 0, membrane) pixels only; on cell pixels
  ``w = w_c``. Where fewer than two cells exist, the border term is 0.
* ``w_c`` balances the two classes (membrane = label 0, cell = label > 0) by inverse
  frequency: ``w_c(x) = N / (K * N_c(x))`` with ``N`` the pixel count, ``N_c(x)`` the count
  of x's class and ``K`` the number of classes present (1 or 2). Its mean over the image is
  exactly 1. ``class_balance="none"`` sets ``w_c = 1``.
* Distances are in pixels of the finest axis: ``sampling`` (e.g. ``(50, 4, 4)`` nm for an
  anisotropic stack) is divided by its minimum, so ``sigma`` stays in finest-axis pixels.
* ``cutoff``: border terms below ``cutoff`` are set to 0. Only cells closer than
  ``D = sqrt(2 sigma^2 ln(w0 / cutoff))`` can contribute (``d1 + d2 <= D``), so each cell's
  distance transform is computed in its bounding box grown by about ``D - 1`` only (a
  background pixel has ``d1 >= 1``). The result then
  differs from the exact map (``naive_border_weight_map``) by less than ``cutoff`` and equals
  it (to float rounding) with ``cutoff=0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

ClassBalance = Literal["frequency", "none"]
CLASS_BALANCES: tuple[str, ...] = ("frequency", "none")


@dataclass(frozen=True)
class WeightMapConfig:
    """Parameters of Eq. 2; the defaults are the paper's (w0 = 10, sigma = 5 px)."""

    w0: float = 10.0  # peak height of the border term
    sigma: float = 5.0  # width of the border term, in pixels of the finest axis
    class_balance: ClassBalance = "frequency"  # w_c: inverse class frequency, or "none" (1)
    cutoff: float = 0.01  # border terms below this are dropped (0 = exact, slower)

    def __post_init__(self) -> None:
        for name in ("w0", "sigma", "cutoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"expected a finite number for {name}, got {value!r}")
        if self.w0 < 0:
            raise ValueError(f"expected w0 >= 0, got {self.w0}")
        if self.sigma <= 0:
            raise ValueError(f"expected sigma > 0, got {self.sigma}")
        if self.cutoff < 0:
            raise ValueError(f"expected cutoff >= 0, got {self.cutoff}")
        if self.class_balance not in CLASS_BALANCES:
            raise ValueError(
                f"expected class_balance in {CLASS_BALANCES}, got {self.class_balance!r}"
            )

    @property
    def reach(self) -> float:
        """The largest ``d1 + d2`` whose border term is at least ``cutoff`` (inf if cutoff=0)."""
        if self.cutoff == 0:
            return math.inf
        if self.w0 <= self.cutoff:
            return 0.0
        return math.sqrt(2.0 * self.sigma**2 * math.log(self.w0 / self.cutoff))


# --------------------------------------------------------------------------- validation


def _as_labels(labels: object, ndims: tuple[int, ...], what: str) -> np.ndarray:
    """Return ``labels`` as a non-negative integer array, or raise a ValueError."""
    arr = np.asarray(labels)
    if arr.ndim not in ndims:
        wanted = " or ".join(f"{n}D" for n in ndims)
        raise ValueError(f"expected {what} as a {wanted} array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"expected a non-empty label array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("expected finite integer labels, got NaN or inf values")
        bad = arr[arr != np.round(arr)]
        if bad.size:
            raise ValueError(
                f"expected integer-valued labels, got a {arr.dtype} array with non-integer "
                f"values (e.g. {bad.flat[0]!r})"
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected an integer or boolean label array, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"expected non-negative labels (0 = membrane), got minimum {arr.min()}")
    return arr


def _normalised_sampling(sampling: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel size relative to the finest axis (so distances are in finest-axis pixels)."""
    if sampling is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(sampling, dtype=float)))
    if len(values) != ndim:
        raise ValueError(f"expected {ndim} sampling values (one per axis), got {sampling!r}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"expected positive finite sampling values, got {sampling!r}")
    finest = min(values)
    return tuple(s / finest for s in values)


# --------------------------------------------------------------------------- building blocks


def cells_from_labels(labels: np.ndarray, instances: bool = False) -> tuple[np.ndarray, int]:
    """Cell ids (int32, 0 = background) and the largest id ``n``.

    Binary labels: connected components of ``labels > 0`` (4-connected in 2D, 6 in 3D),
    numbered ``1..n``. Instance labels: each non-zero id is one cell; ids are kept (gaps
    allowed) unless they exceed the pixel count, then renumbered ``1..n``.
    """
    arr = _as_labels(labels, (2, 3), "labels")
    if not instances:
        structure = ndimage.generate_binary_structure(arr.ndim, 1)
        cells, n = ndimage.label(arr > 0, structure=structure)
        return cells.astype(np.int32, copy=False), int(n)
    if int(arr.max()) > arr.size:  # sparse ids: renumber so find_objects stays small
        ids, inverse = np.unique(arr, return_inverse=True)
        offset = 1 if ids[0] != 0 else 0
        cells = (inverse.reshape(arr.shape) + offset).astype(np.int32)
        return cells, int(ids.size - (1 - offset))
    return arr.astype(np.int32, copy=False), int(arr.max())


def class_weight_values(total: int, cells: int) -> tuple[np.float32, np.float32]:
    """(w_c of membrane, w_c of cell) = ``N / (K · N_c)`` for ``total`` pixels, ``cells`` of them cell.

    ``K`` is the number of classes present, so the mean of w_c over the pixels is 1.
    """
    if not 0 <= cells <= total or total < 1:
        raise ValueError(f"expected 0 <= cells <= total and total >= 1, got cells={cells}, total={total}")
    counts = (total - cells, cells)
    present = sum(1 for c in counts if c > 0)
    weights = [total / (present * c) if c > 0 else 0.0 for c in counts]
    return np.float32(weights[0]), np.float32(weights[1])


def class_weights(
    labels: np.ndarray,
    class_balance: ClassBalance = "frequency",
    *,
    class_counts: tuple[int, int] | None = None,
) -> np.ndarray:
    """Per-pixel class-balance weight ``w_c`` (float32); label 0 = membrane, > 0 = cell.

    ``"frequency"``: ``N / (K * N_c)`` with ``K`` the number of classes present, so the mean
    over the image is 1. ``"none"``: all ones. ``class_counts = (N, N_cell)`` uses counts
    measured elsewhere (e.g. over a whole volume processed block by block).
    """
    if class_balance not in CLASS_BALANCES:
        raise ValueError(f"expected class_balance in {CLASS_BALANCES}, got {class_balance!r}")
    arr = _as_labels(labels, (2, 3), "labels")
    if class_balance == "none":
        return np.ones(arr.shape, dtype=np.float32)
    cell = arr > 0
    total, n_cell = class_counts if class_counts is not None else (arr.size, int(np.count_nonzero(cell)))
    membrane_w, cell_w = class_weight_values(int(total), int(n_cell))
    return np.where(cell, cell_w, membrane_w)


def _border_term(
    cells: np.ndarray, d1: np.ndarray, d2: np.ndarray, config: WeightMapConfig
) -> np.ndarray:
    """``w0 exp(-(d1+d2)^2 / 2 sigma^2)`` on background pixels, 0 on cells (float64)."""
    term = np.zeros(cells.shape, dtype=np.float64)
    background = cells == 0
    total = d1[background] + d2[background]
    with np.errstate(over="ignore", invalid="ignore"):
        term[background] = config.w0 * np.exp(-(total * total) / (2.0 * config.sigma**2))
    return term


def _two_nearest(
    cells: np.ndarray, sampling: tuple[float, ...], reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest cell, exact on every background pixel
    with ``d1 + d2 <= reach`` (elsewhere they may be too large, never too small).

    A background pixel has ``d1 >= 1`` (the finest spacing), so a cell that is one of its two
    nearest with ``d1 + d2 <= reach`` lies within ``reach - 1``. Each cell's distance
    transform is therefore computed only in its bounding box grown by ``m`` pixels per axis,
    the smallest ``m`` with ``(m + 1) * spacing > reach - 1``: all pixels outside are farther.
    """
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    limit = max(reach - 1.0, 0.0)
    margins = [None if math.isinf(reach) else math.floor(limit / s) for s in sampling]
    for cell_id, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(None) if m is None else slice(max(0, b.start - m), min(n, b.stop + m))
            for b, m, n in zip(box, margins, cells.shape)
        )
        dist = ndimage.distance_transform_edt(cells[grown] != cell_id, sampling=sampling)
        near, second = d1[grown], d2[grown]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


# --------------------------------------------------------------------------- public maps


def check_has_membrane(foreground: int, total: int, where: object) -> None:
    """Refuse labels without a single membrane voxel (label 0): the EM image given as labels,
    say with the arguments swapped, whose weight map and training would look plausible."""
    if total and foreground == total:
        raise ValueError(
            f"expected labels with membrane (label 0) somewhere, got none in {where} (every voxel > 0): the EM image "
            "given as labels? Labels are 0 = membrane, > 0 = cell; check the order of the arguments"
        )


def border_weight_map(
    labels: np.ndarray,
    config: WeightMapConfig = WeightMapConfig(),
    *,
    instances: bool = False,
    sampling: Sequence[float] | None = None,
    class_counts: tuple[int, int] | None = None,
) -> np.ndarray:
    """Eq. 2 weight map (float32, same shape) of one 2D image or one 3D volume.

    ``labels``: 0 = membrane/background, > 0 = cell (binary) or cell id (``instances``).
    ``sampling``: voxel size per axis (any unit; only ratios matter) for true anisotropic
    distances, expressed in pixels of the finest axis. Terms below ``config.cutoff`` are 0.
    ``class_counts``: (pixels, cell pixels) for w_c, when measured over a larger volume.
    """
    if not isinstance(config, WeightMapConfig):
        raise ValueError(f"expected a WeightMapConfig, got {type(config).__name__}")
    arr = _as_labels(labels, (2, 3), "labels")
    spacing = _normalised_sampling(sampling, arr.ndim)
    cells, _ = cells_from_labels(arr, instances)
    weights = class_weights(arr, config.class_balance, class_counts=class_counts).astype(np.float64)
    reach = config.reach
    if config.w0 > 0 and reach > 0:
        d1, d2 = _two_nearest(cells, spacing, reach)
        term = _border_term(cells, d1, d2, config)
        term[term < config.cutoff] = 0.0
        weights += term
    return weights.astype(np.float32)


def weight_map_stack(
    labels_stack: np.ndarray,
    config: WeightMapConfig = WeightMapConfig(),
    *,
    instances: bool = False,
) -> np.ndarray:
    """One 2D weight map per slice of a ``(z, y, x)`` stack (each slice on its own)."""
    arr = _as_labels(labels_stack, (3,), "a (z, y, x) label stack")
    out = np.empty(arr.shape, dtype=np.float32)
    for z, plane in enumerate(arr):
        out[z] = border_weight_map(plane, config, instances=instances)
    return out


def naive_border_weight_map(
    labels: np.ndarray,
    config: WeightMapConfig = WeightMapConfig(),
    *,
    instances: bool = False,
    sampling: Sequence[float] | None = None,
) -> np.ndarray:
    """The exact reference: a full distance transform per cell, no cutoff (slow).

    For each cell, ``distance_transform_edt`` of its complement over the whole image; the
    two smallest distances per pixel give ``d1`` and ``d2``. ``config.cutoff`` is ignored.
    """
    arr = _as_labels(labels, (2, 3), "labels")
    spacing = _normalised_sampling(sampling, arr.ndim)
    cells, n = cells_from_labels(arr, instances)
    d1 = np.full(arr.shape, np.inf)
    d2 = np.full(arr.shape, np.inf)
    for cell_id in range(1, n + 1):
        dist = ndimage.distance_transform_edt(cells != cell_id, sampling=spacing)
        if not np.any(dist == 0):  # id absent (sparse instance ids)
            continue
        d2 = np.minimum(d2, np.maximum(d1, dist))
        d1 = np.minimum(d1, dist)
    weights = class_weights(arr, config.class_balance).astype(np.float64)
    weights += _border_term(cells, d1, d2, config)
    return weights.astype(np.float32)
