"""Synthetic cells and probability stores shaped like an `emunet segment` output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage


def voronoi_cells(shape: tuple[int, int, int], n: int, seed: int, anisotropy: tuple[float, float, float] = (1, 1, 1)) -> np.ndarray:
    """(z, y, x) int32 cells 1..n (Voronoi of n random points, anisotropic distances)."""
    rng = np.random.default_rng(seed)
    points = rng.random((n, 3)) * np.asarray(shape)
    grid = np.stack(np.meshgrid(*(np.arange(s) + 0.5 for s in shape), indexing="ij"), axis=-1)
    d = (((grid[..., None, :] - points) * np.asarray(anisotropy)) ** 2).sum(-1)
    return (np.argmin(d, axis=-1) + 1).astype(np.int32)


def membranes(cells: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """True where a voxel's neighbour (along ``axes``) belongs to another cell."""
    out = np.zeros(cells.shape, dtype=bool)
    for axis in axes:
        diff = np.diff(cells, axis=axis) != 0
        lo = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        out[tuple(lo)] |= diff
    return out


def probability_from(cells: np.ndarray, axes: tuple[int, ...] = (0, 1, 2), seed: int = 0, noise: float = 0.05,
                     thick: int = 1) -> np.ndarray:
    """uint8 round(p·255): 1 inside cells, 0 on membranes (grown by ``thick`` voxels), smoothed, a little noise."""
    wall = membranes(cells, axes)
    if thick:
        wall = ndimage.binary_dilation(wall, iterations=thick)
    p = (~wall).astype(np.float32)
    p = ndimage.gaussian_filter(p, sigma=(0, 0.7, 0.7))
    p += np.random.default_rng(seed).normal(0, noise, p.shape).astype(np.float32)
    return np.clip(np.rint(np.clip(p, 0, 1) * 255), 0, 255).astype(np.uint8)


def write_probability_store(path: Path, prob: np.ndarray, chunks: tuple[int, int, int],
                            voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> str:
    """A Zarr v3 group with ``probability`` (dims z, y, x), z/y/x coords and emunet attrs."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = group.create_array("probability", shape=prob.shape, chunks=chunks, dtype=prob.dtype,
                             fill_value=0, dimension_names=("z", "y", "x"))
    arr[...] = prob
    for axis, n, v in zip("zyx", prob.shape, voxel_size):
        c = group.create_array(axis, shape=(n,), chunks=(n,), dtype="float64", dimension_names=(axis,))
        c[...] = np.arange(n) * float(v)
    group.create_group("ledger")
    group.attrs["emunet"] = {"voxel_size_nm": list(voxel_size)}
    return str(path)


@pytest.fixture(scope="session")
def cells3d() -> np.ndarray:
    return voronoi_cells((19, 45, 38), 12, seed=3)


@pytest.fixture()
def store3d(tmp_path: Path, cells3d: np.ndarray) -> str:
    return write_probability_store(tmp_path / "out.zarr", probability_from(cells3d), (5, 8, 8))


@pytest.fixture(scope="package")
def client(local_scheduler):
    """A client of the session's real two-worker `LocalCluster` (processes; tests/conftest.py),
    shared by this folder's tests, closed when they are done; never the default scheduler
    (tests elsewhere keep theirs)."""
    from distributed import Client

    with Client(local_scheduler, set_as_default=False) as c:
        yield c
