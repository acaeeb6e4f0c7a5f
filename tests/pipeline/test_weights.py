"""Blockwise weight maps equal the whole-volume maps (binary and instance labels, 2D and 3D),
and the halo is what makes them equal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.volume import open_volume
from pipeline.weights import compute_weight_maps, foreground_counts, make_weight_plan, weight_block, weight_halo
from tests.pipeline.conftest import write_zarr
from unetcore.synthetic import synthetic_em_volume
from unetcore.weightmap import WeightMapConfig, border_weight_map, weight_map_stack

CONFIG = WeightMapConfig(sigma=3.0)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_em_volume((4, 64, 80), seed=3).labels.astype(np.uint32)


def reference(arr: np.ndarray, config: WeightMapConfig, instances: bool, mode: str, sampling=None) -> np.ndarray:
    if mode == "2d":
        return weight_map_stack(arr, config, instances=instances)
    return border_weight_map(arr, config, instances=instances, sampling=sampling)


@pytest.mark.parametrize("mode", ["2d", "3d"])
@pytest.mark.parametrize("instances", [False, True])
def test_blockwise_equals_whole_volume(tmp_path: Path, labels: np.ndarray, mode: str, instances: bool) -> None:
    arr = labels if instances else (labels > 0).astype(np.uint8) * 255
    write_zarr(tmp_path / "labels.zarr", arr, (2, 16, 16))
    out = str(tmp_path / "w.zarr")
    plan = compute_weight_maps(str(tmp_path / "labels.zarr"), out, CONFIG, instances=instances, mode=mode, block_shape=(2, 16, 24))
    assert plan.num_blocks == 2 * 4 * 4
    got = zarr.open_array(f"{out}/weights", mode="r")[...]
    expected = reference(arr, CONFIG, instances, mode)
    # float32 rounding of the class-balance term (≤ 1 ulp): see pipeline/weights.py
    np.testing.assert_array_equal(got, expected)
    assert not (tmp_path / "w.zarr" / "scratch").exists()


def test_without_class_balance_the_maps_are_bitwise_equal(tmp_path: Path, labels: np.ndarray) -> None:
    config = dataclasses.replace(CONFIG, class_balance="none")
    binary = (labels > 0).astype(np.uint8)
    write_zarr(tmp_path / "l.zarr", binary, (4, 64, 80))
    compute_weight_maps(str(tmp_path / "l.zarr"), str(tmp_path / "w.zarr"), config, mode="3d", block_shape=(2, 32, 16))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "w.zarr/weights"))[...], border_weight_map(binary, config))


def test_anisotropic_3d_instances(tmp_path: Path, labels: np.ndarray) -> None:
    write_zarr(tmp_path / "l.zarr", labels, (2, 32, 32), attributes={"resolution": [12, 4, 4]})
    plan = compute_weight_maps(str(tmp_path / "l.zarr"), str(tmp_path / "w.zarr"), CONFIG, instances=True, mode="3d", block_shape=(1, 16, 16))
    assert plan.sampling == (12.0, 4.0, 4.0) and plan.halo[0] < plan.halo[1]
    expected = border_weight_map(labels, CONFIG, instances=True, sampling=(12, 4, 4))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "w.zarr/weights"))[...], expected)


def test_a_smaller_halo_would_not_be_exact(tmp_path: Path, labels: np.ndarray) -> None:
    write_zarr(tmp_path / "l.zarr", labels, (4, 64, 80))
    volume = open_volume(tmp_path / "l.zarr", dtypes=("uint32",))
    plan = make_weight_plan(volume, "unused", CONFIG, instances=True, mode="2d", block_shape=(4, 16, 16))
    short = dataclasses.replace(plan, halo=(0, 2, 2))
    counts = foreground_counts(plan, volume)
    expected = weight_map_stack(labels, CONFIG, instances=True)

    def assemble(p) -> np.ndarray:
        out = np.zeros(labels.shape, np.float32)
        for i in range(p.num_blocks):
            roi = p.block(i).write_roi
            out[roi.to_slices()] = weight_block(p, i, lambda r: volume.read(r).astype(np.int64), counts)
        return out

    np.testing.assert_array_equal(assemble(plan), expected)
    assert np.abs(assemble(short) - expected).max() > 0.1


def test_binary_cells_joined_outside_the_halo_are_one_cell(tmp_path: Path) -> None:
    """A U-shaped cell whose arms meet only far away: blockwise labelling must join them."""
    img = np.zeros((1, 60, 40), np.uint8)
    img[0, 5:58, 5:11] = 1  # left arm
    img[0, 5:58, 14:20] = 1  # right arm, 3 px of membrane between the arms
    img[0, 52:58, 5:20] = 1  # the bottom joins them (far from the top)
    img[0, 5:58, 30:36] = 1  # a separate cell
    write_zarr(tmp_path / "u.zarr", img, (1, 60, 40))
    config = WeightMapConfig(sigma=2.0)
    compute_weight_maps(str(tmp_path / "u.zarr"), str(tmp_path / "w.zarr"), config, mode="2d", block_shape=(1, 16, 16))
    got = zarr.open_array(str(tmp_path / "w.zarr/weights"))[...]
    np.testing.assert_array_equal(got, weight_map_stack(img, config))


def test_halo_and_refusals() -> None:
    assert weight_halo(WeightMapConfig(sigma=5.0), "2d")[0] == 0
    reach = WeightMapConfig(sigma=5.0).reach
    assert weight_halo(WeightMapConfig(sigma=5.0), "2d")[1] == int(reach - 1) + 1
    assert weight_halo(WeightMapConfig(w0=0.0), "3d") == (0, 0, 0)
    with pytest.raises(ValueError, match="cutoff > 0"):
        weight_halo(WeightMapConfig(cutoff=0.0), "2d")
    with pytest.raises(ValueError, match="'2d' or '3d'"):
        weight_halo(WeightMapConfig(), "4d")  # type: ignore[arg-type]


def test_output_is_ome_and_xarray_readable(tmp_path: Path, labels: np.ndarray) -> None:
    write_zarr(tmp_path / "l.zarr", labels[:2], (2, 64, 80), attributes={"resolution": [50, 4, 4]})
    out = str(tmp_path / "w.zarr")
    compute_weight_maps(str(tmp_path / "l.zarr"), out, CONFIG, instances=True)
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["weights"].dims == ("z", "y", "x") and float(ds["z"][1]) == 50.0
    assert open_volume(out).voxel_size == (50.0, 4.0, 4.0)
    with pytest.raises(FileExistsError, match="overwrite"):
        compute_weight_maps(str(tmp_path / "l.zarr"), out, CONFIG, instances=True)
    compute_weight_maps(str(tmp_path / "l.zarr"), out, CONFIG, instances=True, overwrite=True)
