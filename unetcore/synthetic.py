"""Deterministic synthetic EM images and volumes with dense instance labels.

Geometry: a Voronoi tessellation of jittered hexagonal seeds, computed in smoothly warped
coordinates (an elastic warp applied to image and labels together, since both are rendered
from the same warped geometry). Membranes are the pixels within half a local thickness of a
cell boundary; the thickness (1-5 px by default) varies smoothly along each boundary. Every
cell is one 4-connected component and is separated from its neighbours by membrane. Volumes
are slices of a slowly varying tessellation: seeds drift a little per slice and the warp
varies smoothly along z, so cells continue across slices with the same id.

Appearance: bright cytoplasm (one grey per cell), dark membranes, mitochondria-like dark
ellipses (ellipsoids in volumes) and vesicle-like rings inside cells, correlated texture,
a Gaussian PSF, Poisson (shot) and Gaussian (read) noise.

Labels are int32 instance ids 1..n with 0 = membrane; the binary training target is
``labels > 0``. The same seed gives bitwise-identical output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from scipy import ndimage, special
from scipy.spatial import cKDTree

MIN_CELL_PIXELS = 8  # smaller slivers of cells (at image borders, junctions) become membrane


@dataclass(frozen=True)
class SyntheticEMConfig:
    """Appearance and geometry of the synthetic EM data (lengths in pixels)."""

    cell_size: float = 26.0  # seed grid spacing (cell diameter ~ cell_size / sqrt(1 - dropout))
    jitter: float = 0.4  # seed jitter, as a fraction of cell_size (0 = regular hexagons)
    seed_dropout: float = 0.3  # fraction of grid seeds removed (more varied cell sizes)
    membrane_min: float = 1.0  # thinnest membrane
    membrane_max: float = 5.0  # thickest membrane
    membrane_scale: float = 12.0  # correlation length of the thickness along a boundary
    warp_amplitude: float = 5.0  # typical displacement of the smooth elastic warp; 0 = none
    warp_scale: float = 40.0  # correlation length of the elastic warp
    z_drift: float = 0.5  # volumes: typical in-plane drift of a cell per slice
    z_scale: float = 6.0  # volumes: correlation length of warp and thickness along z (slices)
    mito_density: float = 1.2e-4  # mitochondria-like dark ellipses per pixel (per slice)
    vesicle_density: float = 5e-4  # vesicle-like small rings per pixel (per slice)
    organelle_depth: float = 3.0  # volumes: mean half-extent of organelles along z (slices)
    cell_grey: tuple[float, float] = (150.0, 205.0)  # range of one cell's cytoplasm grey
    membrane_grey: float = 50.0  # grey of membranes
    mito_grey: float = 100.0  # grey of mitochondria (their rim is 30 darker)
    vesicle_grey: float = 115.0  # grey of vesicle rims
    texture_amplitude: float = 10.0  # standard deviation of the correlated texture (grey)
    texture_scale: float = 1.5  # correlation length of the texture
    psf_sigma: float = 1.0  # Gaussian PSF blur in-plane; 0 = none
    photons_per_grey: float = 1.0  # Poisson noise: counts = grey * this (lower = noisier)
    read_noise: float = 4.0  # additive Gaussian noise standard deviation (grey)

    def __post_init__(self) -> None:
        for f in fields(self):
            values = getattr(self, f.name)
            for v in values if isinstance(values, tuple) else (values,):
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"expected a finite number >= 0 for {f.name}, got {values!r}")
        if self.cell_size < 4:
            raise ValueError(f"expected cell_size >= 4 px, got {self.cell_size}")
        if not 1.0 <= self.membrane_min <= self.membrane_max:
            raise ValueError(
                "expected 1 <= membrane_min <= membrane_max, got "
                f"{self.membrane_min} and {self.membrane_max}"
            )
        if self.seed_dropout >= 0.9:
            raise ValueError(f"expected seed_dropout < 0.9, got {self.seed_dropout}")
        if len(self.cell_grey) != 2 or self.cell_grey[0] > self.cell_grey[1]:
            raise ValueError(f"expected cell_grey as (low, high), got {self.cell_grey!r}")
        for name in ("membrane_scale", "warp_scale", "z_scale", "organelle_depth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")


class SyntheticEM(NamedTuple):
    """A synthetic image (uint8) and its instance labels (int32, 0 = membrane)."""

    image: np.ndarray
    labels: np.ndarray


# --------------------------------------------------------------------------- random fields


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], scales: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``scales`` per axis.

    A coarse white-noise grid (spacing = scale) is smoothed by a separable Gaussian kernel
    applied as one small matrix per axis; rows are normalised so the variance is exactly 1.
    """
    mats = []
    for n, s in zip(shape, scales):
        centres = np.arange(-2.0 * s, n + 2.0 * s + s, s)
        kernel = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / s) ** 2)
        mats.append(kernel / np.sqrt((kernel**2).sum(axis=1, keepdims=True)))
    out = rng.standard_normal(tuple(m.shape[1] for m in mats))
    for axis, mat in enumerate(mats):
        out = np.moveaxis(np.tensordot(mat, out, axes=([1], [axis])), 0, axis)
    return out


def _seeds(
    rng: np.random.Generator, extent: tuple[int, int], pad: float, config: SyntheticEMConfig
) -> np.ndarray:
    """Jittered hexagonal seed positions (y, x) covering the image plus ``pad``."""
    a = config.cell_size
    ys = np.arange(-pad, extent[0] + pad, a * math.sqrt(3) / 2)
    xs = np.arange(-pad, extent[1] + pad, a)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    xx = xx + (np.arange(ys.size)[:, None] % 2) * a / 2
    seeds = np.stack([yy.ravel(), xx.ravel()], axis=1)
    seeds = seeds + rng.uniform(-1, 1, seeds.shape) * config.jitter * a
    return seeds[rng.uniform(0, 1, seeds.shape[0]) >= config.seed_dropout]


# --------------------------------------------------------------------------- geometry


def _tessellate_slice(
    seeds: np.ndarray, warp: np.ndarray, half_thickness: np.ndarray
) -> np.ndarray:
    """Seed index + 1 per pixel of one slice, 0 within half a thickness of a boundary."""
    ny, nx = half_thickness.shape
    yy, xx = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    points = np.stack([(yy + warp[0]).ravel(), (xx + warp[1]).ravel()], axis=1)
    dist, idx = cKDTree(seeds).query(points, k=3)
    # distance to the bisector with the 2nd and 3rd nearest seeds (the cells that meet here)
    diff = seeds[idx[:, 1:]] - seeds[idx[:, :1]]
    gaps = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    sq = dist * dist
    to_boundary = ((sq[:, 1:] - sq[:, :1]) / (2.0 * gaps)).min(axis=1)
    labels = (idx[:, 0] + 1).astype(np.int32)
    labels[to_boundary <= half_thickness.ravel()] = 0
    return labels.reshape(ny, nx)


def _clean_slice(labels: np.ndarray) -> np.ndarray:
    """Separate touching cells by membrane, keep each id's largest 4-connected piece."""
    a, b = labels[:, :-1], labels[:, 1:]
    clash_x = (a != b) & (a > 0) & (b > 0)
    a, b = labels[:-1, :], labels[1:, :]
    clash_y = (a != b) & (a > 0) & (b > 0)
    out = labels.copy()
    out[:, :-1][clash_x] = 0
    out[:, 1:][clash_x] = 0
    out[:-1, :][clash_y] = 0
    out[1:, :][clash_y] = 0
    pieces, n = ndimage.label(out > 0)  # 4-connected; each piece has one id now
    if n == 0:
        return out
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
    piece_id = np.zeros(n + 1, dtype=np.int64)
    piece_id[pieces.ravel()] = out.ravel()
    order = np.lexsort((-sizes, piece_id[1:]))  # by id, largest piece first
    first = np.ones(n, dtype=bool)
    first[1:] = piece_id[1:][order][1:] != piece_id[1:][order][:-1]
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:][order[first]] = True
    keep[1:] &= sizes >= MIN_CELL_PIXELS
    out[~keep[pieces]] = 0
    return out


def _geometry(
    rng: np.random.Generator, shape: tuple[int, int, int], config: SyntheticEMConfig
) -> np.ndarray:
    """Instance labels (z, y, x), ids consistent across slices, renumbered 1..n."""
    nz, ny, nx = shape
    drift_extent = config.z_drift * nz * 2.0
    pad = 2.0 * config.cell_size + 3.0 * config.warp_amplitude + drift_extent
    seeds = _seeds(rng, (ny, nx), pad, config)
    velocity = rng.standard_normal(seeds.shape) * config.z_drift
    warp_scales = (config.z_scale, config.warp_scale, config.warp_scale)
    warp = [config.warp_amplitude * _smooth_field(rng, shape, warp_scales) for _ in range(2)]
    thick_scales = (config.z_scale, config.membrane_scale, config.membrane_scale)
    uniform = special.ndtr(_smooth_field(rng, shape, thick_scales))
    span = config.membrane_max - config.membrane_min
    half_thickness = 0.5 * (config.membrane_min + span * uniform)
    labels = np.empty(shape, dtype=np.int32)
    for z in range(nz):
        seeds_z = seeds + velocity * (z - (nz - 1) / 2.0)
        raw = _tessellate_slice(seeds_z, (warp[0][z], warp[1][z]), half_thickness[z])
        labels[z] = _clean_slice(raw)
    lut = np.zeros(seeds.shape[0] + 1, dtype=np.int32)
    present = np.bincount(labels.ravel(), minlength=lut.size) > 0
    present[0] = False
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------- appearance


def _add_organelles(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    config: SyntheticEMConfig,
    mito: bool,
) -> None:
    """Paint mitochondria (dark ellipses, darker rim) or vesicles (rings) inside cells."""
    nz, ny, nx = labels.shape
    density = config.mito_density if mito else config.vesicle_density
    per_slice = nz / (2.0 * config.organelle_depth) if nz > 1 else 1.0
    count = int(rng.poisson(density * ny * nx * max(per_slice, 1.0)))
    centres = rng.uniform(0, 1, (count, 3)) * np.array([nz, ny, nx])
    if mito:
        semi = np.stack([rng.uniform(6, 14, count), rng.uniform(3, 6, count)], axis=1)
        rim, inner, edge = 0.7, config.mito_grey, config.mito_grey - 30.0
    else:
        semi = np.repeat(rng.uniform(1.5, 3.5, count)[:, None], 2, axis=1)
        rim, inner, edge = 0.55, np.nan, config.vesicle_grey
    angles = rng.uniform(0, math.pi, count)
    depths = rng.uniform(0.5, 2.0 * config.organelle_depth, count)
    for (cz, cy, cx), (sa, sb), angle, depth in zip(centres, semi, angles, depths):
        cell = labels[int(cz), int(cy), int(cx)]
        if cell == 0:
            continue
        r = int(math.ceil(sa)) + 1
        dz = int(math.ceil(depth)) if nz > 1 else 0
        z0, z1 = max(0, int(cz) - dz), min(nz, int(cz) + dz + 1)
        y0, y1 = max(0, int(cy) - r), min(ny, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(nx, int(cx) + r + 1)
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        u = (yy - cy) * math.cos(angle) + (xx - cx) * math.sin(angle)
        v = -(yy - cy) * math.sin(angle) + (xx - cx) * math.cos(angle)
        q = (u / sa) ** 2 + (v / sb) ** 2 + ((zz - int(cz)) / depth) ** 2 * (nz > 1)
        inside = (q <= 1.0) & (labels[z0:z1, y0:y1, x0:x1] == cell)
        box = image[z0:z1, y0:y1, x0:x1]
        box[inside & (q > rim**2)] = edge
        if not math.isnan(inner):
            box[inside & (q <= rim**2)] = inner


def _render(
    rng: np.random.Generator, labels: np.ndarray, config: SyntheticEMConfig
) -> np.ndarray:
    """The uint8 image of a label volume (z, y, x)."""
    low, high = config.cell_grey
    grey = rng.uniform(low, high, int(labels.max()) + 1).astype(np.float32)
    grey[0] = config.membrane_grey
    image = grey[labels]
    _add_organelles(rng, image, labels, config, mito=True)
    _add_organelles(rng, image, labels, config, mito=False)
    if config.texture_amplitude > 0:
        noise = rng.standard_normal(labels.shape, dtype=np.float32)
        texture = ndimage.gaussian_filter(noise, (0, config.texture_scale, config.texture_scale))
        image += texture * np.float32(config.texture_amplitude / max(texture.std(), 1e-6))
    if config.psf_sigma > 0:
        image = ndimage.gaussian_filter(image, (0, config.psf_sigma, config.psf_sigma))
    np.clip(image, 0, 255, out=image)
    if config.photons_per_grey > 0:
        gain = config.photons_per_grey
        image = (rng.poisson(image * gain) / gain).astype(np.float32)
    if config.read_noise > 0:
        image += rng.normal(0.0, config.read_noise, labels.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _check_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    dims = tuple(shape)
    if len(dims) != ndim or not all(isinstance(n, (int, np.integer)) and n > 0 for n in dims):
        raise ValueError(f"expected a shape of {ndim} positive ints, got {shape!r}")
    return tuple(int(n) for n in dims)


def _generator(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"expected a non-negative int seed or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


# --------------------------------------------------------------------------- public API


def synthetic_em_2d(
    shape: tuple[int, int] = (256, 256),
    seed: int | np.random.Generator = 0,
    config: SyntheticEMConfig = SyntheticEMConfig(),
) -> SyntheticEM:
    """One synthetic EM image (uint8, ``shape``) and its instance labels (int32, 0 = membrane)."""
    ny, nx = _check_shape(shape, 2)
    rng = _generator(seed)
    labels = _geometry(rng, (1, ny, nx), config)
    image = _render(rng, labels, config)
    return SyntheticEM(image[0], labels[0])


def synthetic_em_volume(
    shape: tuple[int, int, int] = (16, 256, 256),
    seed: int | np.random.Generator = 0,
    config: SyntheticEMConfig = SyntheticEMConfig(),
) -> SyntheticEM:
    """A synthetic EM stack (z, y, x) whose cells continue across z with the same ids."""
    dims = _check_shape(shape, 3)
    rng = _generator(seed)
    labels = _geometry(rng, dims, config)
    image = _render(rng, labels, config)
    return SyntheticEM(image, labels)
