"""Training tiles with the paper's augmentation, sampled straight from the full image.

Each tile is one resampling of the image through a coordinate map that composes, in the
tile's own frame:

* a random flip per axis and a random rotation (in-plane for 2D and 3D);
* an elastic deformation: displacement vectors on a coarse 3×3 (×3) grid drawn from
  N(0, σ = 10 px), interpolated to every pixel by cubic splines ("bicubic");
* a random shift (the tile's position).

The same map resamples the image (cubic), the labels (nearest) and the weights (linear),
so they stay aligned. Coordinates that leave the image are mirrored about the image's edge
with the edge pixel repeated (scipy ``mode="reflect"`` = numpy ``mode="symmetric"``,
:data:`EDGE_MODE`): the same mirror padding that inference applies at a volume's true
borders (`unetcore.predict`, `pipeline.geometry`), so the model never sees at training a
border it will not see at inference. Grey values then get a random gamma, contrast and
brightness change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# scipy's "reflect" (d c b a | a b c d) is numpy's "symmetric" (`geometry.MIRROR`), the
# mirror of inference; scipy's "mirror" (c b | a b c) would not repeat the edge pixel.
EDGE_MODE = "reflect"


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation recipe (paper defaults; set `elastic_sigma=0` etc. to switch off)."""

    elastic_grid: int = 3  # coarse displacement grid points per axis (the paper: 3×3)
    elastic_sigma: float = 10.0  # std of the coarse displacements in px (the paper: 10)
    rotate: bool = True  # uniform random in-plane rotation
    flip: bool = True  # random flip of every axis
    gamma: float = 0.2  # log-gamma drawn from U(−g, g)
    contrast: float = 0.15  # contrast factor drawn from 1 + U(−c, c)
    brightness: float = 0.1  # offset drawn from U(−b, b), in normalised grey units
    noise: float = 0.0  # std of additive Gaussian noise, in normalised grey units

    def __post_init__(self) -> None:
        if self.elastic_grid < 2:
            raise ValueError(f"expected an elastic grid of at least 2 points, got {self.elastic_grid}")
        for name in ("elastic_sigma", "gamma", "contrast", "brightness", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"expected {name} ≥ 0, got {getattr(self, name)}")

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(elastic_sigma=0.0, rotate=False, flip=False, gamma=0.0, contrast=0.0, brightness=0.0)


def _cubic_basis(n: int, grid: int) -> np.ndarray:
    """(n, grid) weights: cubic-spline interpolation from `grid` nodes to `n` pixels (1D)."""
    where = np.linspace(0, grid - 1, n)[None]
    return np.stack(
        [ndimage.map_coordinates(np.eye(grid)[k], where, order=3, mode="nearest") for k in range(grid)], axis=1
    )


def elastic_displacement(
    shape: tuple[int, ...], rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Per-pixel displacements (ndim, *shape) interpolated from a coarse N(0, σ²) grid.

    Cubic-spline interpolation is a tensor product of 1D interpolations, so the field is
    the coarse grid contracted with one small (n, grid) basis per axis: the same numbers as
    `scipy.ndimage.map_coordinates(order=3)` on the whole grid, at a fraction of the cost.
    """
    ndim = len(shape)
    coarse = rng.normal(0.0, sigma, size=(ndim,) + (grid,) * ndim)
    bases = [_cubic_basis(n, grid) for n in shape]
    letters = "abcd"[:ndim]
    spec = "z" + letters + "," + ",".join(f"{o}{i}" for o, i in zip("pqrs", letters)) + "->z" + "pqrs"[:ndim]
    return np.einsum(spec, coarse, *bases, optimize=True).astype(np.float32)


def _rotation(ndim: int, angle: float) -> np.ndarray:
    """Rotation by `angle` in the plane of the last two axes."""
    r = np.eye(ndim)
    c, s = np.cos(angle), np.sin(angle)
    r[-2:, -2:] = [[c, -s], [s, c]]
    return r


@dataclass(frozen=True)
class Tile:
    """One sampled training tile: image on the input grid, labels/weights on the output grid."""

    image: np.ndarray  # (C, *in_shape) float32
    labels: np.ndarray  # (*out_shape) int64 classes
    weights: np.ndarray  # (*out_shape) float32


def sample_tile(
    image: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> Tile:
    """Draw one augmented tile. `image` is normalised float, (*S) or (C, *S); labels (*S)."""
    ndim = len(in_shape)
    if image.ndim == ndim:
        image = image[None]
    spatial = image.shape[1:]
    if labels.shape != spatial or (weights is not None and weights.shape != spatial):
        raise ValueError(
            f"expected image, labels and weights of one shape, got {spatial}, {labels.shape}, "
            f"{None if weights is None else weights.shape}"
        )
    in_arr = np.asarray(in_shape, dtype=np.float64)
    # Tile centre: anywhere in the image (the output window may reach into the mirror).
    centre = np.array([rng.uniform(0, s - 1) if s > 1 else 0.0 for s in spatial])
    # Coordinates of the input grid relative to its own centre.
    axes = [np.arange(n, dtype=np.float64) - (n - 1) / 2 for n in in_shape]
    rel = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(ndim, -1)
    if config.flip:
        rel *= np.where(rng.random(ndim) < 0.5, -1.0, 1.0)[:, None]
    if config.rotate:
        rel = _rotation(ndim, rng.uniform(0, 2 * np.pi)) @ rel
    coords = rel.reshape((ndim,) + tuple(in_shape)) + centre.reshape((ndim,) + (1,) * ndim)
    if config.elastic_sigma > 0:
        coords += elastic_displacement(tuple(in_shape), rng, config.elastic_grid, config.elastic_sigma)
    coords = coords.astype(np.float32)

    channels = [ndimage.map_coordinates(c, coords, order=3, mode=EDGE_MODE) for c in image]
    tile = np.stack(channels).astype(np.float32)
    lo = ((in_arr - np.asarray(out_shape)) // 2).astype(int)
    inner = (slice(None),) + tuple(slice(a, a + n) for a, n in zip(lo, out_shape, strict=True))
    out_coords = coords[inner]
    tile_labels = ndimage.map_coordinates(labels, out_coords, order=0, mode=EDGE_MODE)
    if weights is None:
        tile_weights = np.ones(out_shape, dtype=np.float32)
    else:
        tile_weights = ndimage.map_coordinates(weights, out_coords, order=1, mode=EDGE_MODE)
    tile = _grey_values(tile, rng, config)
    return Tile(tile, tile_labels.astype(np.int64), tile_weights.astype(np.float32))


def _grey_values(tile: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Random gamma (on the tile's own min–max range), contrast, brightness and noise."""
    if config.gamma > 0:
        lo, hi = float(tile.min()), float(tile.max())
        if hi > lo:
            unit = (tile - lo) / (hi - lo)
            tile = unit ** np.float32(np.exp(rng.uniform(-config.gamma, config.gamma))) * (hi - lo) + lo
    if config.contrast > 0:
        mean = tile.mean()
        tile = (tile - mean) * np.float32(1 + rng.uniform(-config.contrast, config.contrast)) + mean
    if config.brightness > 0:
        tile = tile + np.float32(rng.uniform(-config.brightness, config.brightness))
    if config.noise > 0:
        tile = tile + rng.normal(0, config.noise, size=tile.shape).astype(np.float32)
    return tile.astype(np.float32)
