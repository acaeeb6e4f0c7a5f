"""The border weight map (Eq. 2): fast vs the naive reference, hand-checked values, inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unetcore.synthetic import SyntheticEMConfig, synthetic_em_2d
from unetcore.weightmap import (
    WeightMapConfig,
    border_weight_map,
    cells_from_labels,
    class_weights,
    naive_border_weight_map,
    weight_map_stack,
)

TOL = 0.01  # allowed absolute deviation of the fast map from the exact one (= default cutoff)
SMALL_CELLS = SyntheticEMConfig(cell_size=7.0, membrane_min=1.0, membrane_max=2.5)


def two_cells(width: int = 5) -> np.ndarray:
    """Two cells (255) separated by a one-pixel membrane column (0)."""
    labels = np.full((width, 5), 255, dtype=np.uint8)
    labels[:, 2] = 0
    return labels


# --------------------------------------------------------------------------- hand-checked


def test_membrane_between_two_cells_has_the_paper_value() -> None:
    labels = two_cells()
    term = 10.0 * math.exp(-4.0 / 50.0)  # d1 = d2 = 1
    none = border_weight_map(labels, WeightMapConfig(class_balance="none"))
    np.testing.assert_allclose(none[:, 2], 1.0 + term, rtol=1e-6)
    np.testing.assert_array_equal(none[:, [0, 1, 3, 4]], 1.0)
    freq = border_weight_map(labels)
    # 5 membrane and 20 cell pixels: w_c = 25 / (2 * 5) and 25 / (2 * 20)
    np.testing.assert_allclose(freq[:, 2], 2.5 + term, rtol=1e-6)
    np.testing.assert_allclose(freq[:, 0], 0.625, rtol=1e-6)


def test_fewer_than_two_cells_have_no_border_term() -> None:
    one = np.zeros((9, 11), dtype=np.uint8)
    one[2:5, 3:7] = 1
    for labels in (one, np.zeros((9, 11), np.uint8), np.ones((9, 11), np.uint8)):
        np.testing.assert_array_equal(
            border_weight_map(labels, WeightMapConfig(class_balance="none")), 1.0
        )


def test_class_weights_mean_one_and_none_all_ones() -> None:
    _, labels = synthetic_em_2d((64, 80), seed=3)
    w_c = class_weights(labels)
    assert w_c.dtype == np.float32
    assert float(w_c.mean(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert len(np.unique(w_c)) == 2
    assert w_c[labels == 0][0] > w_c[labels > 0][0]  # membrane is the rarer class
    np.testing.assert_array_equal(class_weights(labels, "none"), 1.0)
    np.testing.assert_array_equal(class_weights(np.zeros((4, 4), np.uint8)), 1.0)


def test_border_term_only_on_membrane_pixels() -> None:
    _, labels = synthetic_em_2d((64, 80), seed=4)
    weights = border_weight_map(labels)
    w_c = class_weights(labels)
    np.testing.assert_array_equal(weights[labels > 0], w_c[labels > 0])
    assert np.all(weights[labels == 0] >= w_c[labels == 0])
    assert np.any(weights[labels == 0] > w_c[labels == 0] + 1.0)


def test_cells_binary_are_4_connected_components_and_instances_are_ids() -> None:
    labels = np.array([[1, 0, 2], [0, 1, 0], [3, 0, 3]], dtype=np.int32)
    _, n_binary = cells_from_labels(labels)
    assert n_binary == 5  # diagonal neighbours are separate cells
    cells, n_instances = cells_from_labels(labels, instances=True)
    assert n_instances == 3
    np.testing.assert_array_equal(cells, labels)
    sparse, n_sparse = cells_from_labels(np.array([[0, 10**6], [7, 0]]), instances=True)
    assert n_sparse == 2 and sorted(np.unique(sparse)) == [0, 1, 2]


# --------------------------------------------------------------------------- fast vs naive


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("instances", [False, True])
def test_fast_matches_naive_on_odd_shaped_synthetic_labels(seed: int, instances: bool) -> None:
    _, labels = synthetic_em_2d((37, 53), seed=seed, config=SMALL_CELLS)
    labels = labels if instances else (labels > 0).astype(np.uint8) * 255
    config = WeightMapConfig(sigma=3.0)
    fast = border_weight_map(labels, config, instances=instances)
    naive = naive_border_weight_map(labels, config, instances=instances)
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    assert np.abs(fast - naive).max() <= TOL
    exact = border_weight_map(labels, WeightMapConfig(sigma=3.0, cutoff=0), instances=instances)
    np.testing.assert_allclose(exact, naive, rtol=1e-6, atol=1e-6)


def test_fast_matches_naive_on_a_real_isbi_slice(isbi_labels: np.ndarray) -> None:
    labels = isbi_labels[7]
    fast = border_weight_map(labels)
    naive = naive_border_weight_map(labels)
    assert np.abs(fast - naive).max() <= TOL
    crop = labels[100:260, 200:420]  # the cutoff-free mode is exact
    np.testing.assert_allclose(
        border_weight_map(crop, WeightMapConfig(cutoff=0)),
        naive_border_weight_map(crop),
        rtol=1e-6,
        atol=1e-6,
    )


def test_stack_is_one_map_per_slice(isbi_labels: np.ndarray) -> None:
    stack = isbi_labels[:2, :128, :160]
    maps = weight_map_stack(stack)
    assert maps.shape == stack.shape and maps.dtype == np.float32
    for plane, expected in zip(stack, maps):
        np.testing.assert_array_equal(border_weight_map(plane), expected)


@pytest.fixture(scope="module")
def fibsem_crop(shared_data: Path) -> np.ndarray:
    import h5py

    with h5py.File(shared_data / "gala-fibsem" / "train-gt.lzf.h5", "r") as f:
        return f["stack"][10:26, 20:68, 40:104]


@pytest.mark.parametrize("sampling", [None, (3.0, 1.0, 1.0), (50.0, 4.0, 4.0)])
def test_3d_instances_match_naive(fibsem_crop: np.ndarray, sampling) -> None:
    config = WeightMapConfig(sigma=2.0)
    fast = border_weight_map(fibsem_crop, config, instances=True, sampling=sampling)
    naive = naive_border_weight_map(fibsem_crop, config, instances=True, sampling=sampling)
    assert fast.shape == fibsem_crop.shape
    assert np.abs(fast - naive).max() <= TOL
    background = fibsem_crop == 0
    assert np.all(fast[~background] == class_weights(fibsem_crop)[~background])


def test_anisotropic_sampling_lengthens_distances_along_z() -> None:
    labels = np.full((3, 1, 4), 5, dtype=np.int32)
    labels[1] = 0
    labels[2] = 6  # two cells stacked in z, one membrane slice between them
    config = WeightMapConfig(class_balance="none")
    iso = border_weight_map(labels, config, instances=True)
    aniso = border_weight_map(labels, config, instances=True, sampling=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(iso[1], 1.0 + 10.0 * math.exp(-4.0 / 50.0), rtol=1e-6)
    np.testing.assert_allclose(aniso[1], 1.0 + 10.0 * math.exp(-16.0 / 50.0), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    labels=hnp.arrays(
        np.uint8,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=14),
        elements=st.integers(0, 4),
    ),
    instances=st.booleans(),
    sigma=st.floats(0.5, 6.0),
)
def test_property_fast_matches_naive(labels: np.ndarray, instances: bool, sigma: float) -> None:
    config = WeightMapConfig(sigma=sigma)
    fast = border_weight_map(labels, config, instances=instances)
    naive = naive_border_weight_map(labels, config, instances=instances)
    assert np.abs(fast - naive).max() <= TOL
    exact = border_weight_map(labels, WeightMapConfig(sigma=sigma, cutoff=0), instances=instances)
    np.testing.assert_allclose(exact, naive, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- inputs


def test_integer_valued_float_and_bool_labels_are_accepted() -> None:
    labels = two_cells()
    expected = border_weight_map(labels)
    np.testing.assert_array_equal(border_weight_map(labels.astype(np.float32)), expected)
    np.testing.assert_array_equal(border_weight_map(labels > 0), expected)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros(5, np.uint8), "expected labels as a 2D or 3D array"),
        (np.zeros((2, 2, 2, 2), np.uint8), "expected labels as a 2D or 3D array"),
        (np.zeros((0, 4), np.uint8), "non-empty"),
        (np.full((3, 3), 0.5), "non-integer values"),
        (np.full((3, 3), np.nan), "finite integer labels"),
        (np.full((3, 3), -1), "non-negative labels"),
        (np.full((3, 3), "a"), "integer or boolean"),
    ],
)
def test_bad_labels_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        border_weight_map(labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"w0": -1.0}, "expected w0 >= 0"),
        ({"sigma": 0.0}, "expected sigma > 0"),
        ({"sigma": math.nan}, "expected a finite number for sigma"),
        ({"cutoff": -0.1}, "expected cutoff >= 0"),
        ({"class_balance": "median"}, "expected class_balance"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightMapConfig(**kwargs)


def test_bad_sampling_and_stack_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 2 sampling values"):
        border_weight_map(two_cells(), sampling=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive finite sampling"):
        border_weight_map(two_cells(), sampling=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"expected a \(z, y, x\) label stack as a 3D array"):
        weight_map_stack(two_cells())
    with pytest.raises(ValueError, match="expected a WeightMapConfig"):
        border_weight_map(two_cells(), {"w0": 10})  # type: ignore[arg-type]


def test_class_counts_measured_elsewhere() -> None:
    from unetcore.weightmap import class_weight_values, class_weights

    labels = np.array([[0, 1], [1, 1]])
    # counts from a larger volume: 100 pixels, 80 cell → w_membrane = 100/40, w_cell = 100/160
    w = class_weights(labels, class_counts=(100, 80))
    assert w[0, 0] == np.float32(2.5) and w[0, 1] == np.float32(0.625)
    assert class_weight_values(4, 4) == (np.float32(0.0), np.float32(1.0))
    with pytest.raises(ValueError, match="expected 0 <= cells <= total"):
        class_weight_values(4, 5)
