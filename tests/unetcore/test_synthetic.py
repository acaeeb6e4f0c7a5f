"""The synthetic EM generator: determinism, geometry of cells and membranes, 3D continuity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetcore.synthetic import SyntheticEMConfig, synthetic_em_2d, synthetic_em_volume


@pytest.fixture(scope="module")
def image_2d():
    return synthetic_em_2d((192, 224), seed=11)


@pytest.fixture(scope="module")
def volume():
    return synthetic_em_volume((8, 160, 176), seed=5)


def test_same_seed_is_bitwise_identical_and_other_seeds_differ() -> None:
    a = synthetic_em_2d((96, 80), seed=7)
    b = synthetic_em_2d((96, 80), seed=7)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()
    c = synthetic_em_2d((96, 80), seed=8)
    assert not np.array_equal(a.labels, c.labels)
    v1 = synthetic_em_volume((3, 64, 72), seed=2)
    v2 = synthetic_em_volume((3, 64, 72), seed=2)
    assert v1.image.tobytes() == v2.image.tobytes()
    assert v1.labels.tobytes() == v2.labels.tobytes()


def test_shapes_and_dtypes(image_2d, volume) -> None:
    image, labels = image_2d
    assert image.shape == labels.shape == (192, 224)
    assert image.dtype == np.uint8 and labels.dtype == np.int32
    assert volume.image.shape == volume.labels.shape == (8, 160, 176)
    assert volume.image.dtype == np.uint8 and volume.labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # 0 = membrane, then 1..n
    assert ids.size > 20


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_membrane_fraction_like_isbi(seed: int) -> None:
    _, labels = synthetic_em_2d((256, 256), seed=seed)
    assert 0.15 <= float(np.mean(labels == 0)) <= 0.30


def _assert_cells_are_single_components_separated_by_membrane(labels: np.ndarray) -> None:
    pieces, n = ndimage.label(labels > 0)  # 4-connected
    assert n == len(np.unique(labels)) - 1  # one piece per id (and no two ids touch)
    for axis in (0, 1):
        a = np.moveaxis(labels, axis, 0)[:-1]
        b = np.moveaxis(labels, axis, 0)[1:]
        assert not np.any((a != b) & (a > 0) & (b > 0))


def test_every_cell_is_one_4_connected_component(image_2d, volume) -> None:
    _assert_cells_are_single_components_separated_by_membrane(image_2d.labels)
    for plane in volume.labels:
        _assert_cells_are_single_components_separated_by_membrane(plane)


def test_membranes_are_darker_than_cell_interiors(image_2d) -> None:
    image, labels = image_2d
    interior = ndimage.binary_erosion(labels > 0, iterations=3)
    assert image[labels == 0].mean() + 40 < image[interior].mean()


def test_cells_continue_across_slices(volume) -> None:
    labels = volume.labels
    for z in range(labels.shape[0] - 1):
        a, b = labels[z], labels[z + 1]
        both = (a > 0) & (b > 0)
        assert np.mean(a[both] == b[both]) > 0.9
    assert 0.15 <= float(np.mean(labels == 0)) <= 0.30


def test_config_changes_the_geometry() -> None:
    plain = SyntheticEMConfig(warp_amplitude=0, jitter=0, seed_dropout=0, membrane_max=1.0)
    _, labels = synthetic_em_2d((128, 128), seed=0, config=plain)
    assert float(np.mean(labels == 0)) < 0.15  # thin, straight membranes
    big = SyntheticEMConfig(cell_size=60.0)
    _, few = synthetic_em_2d((128, 128), seed=0, config=big)
    assert few.max() < labels.max()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: synthetic_em_2d((64,)), "expected a shape of 2 positive ints"),
        (lambda: synthetic_em_volume((0, 8, 8)), "expected a shape of 3 positive ints"),
        (lambda: synthetic_em_2d(seed=-1), "non-negative int seed"),
        (lambda: SyntheticEMConfig(membrane_min=3.0, membrane_max=2.0), "membrane_min"),
        (lambda: SyntheticEMConfig(cell_size=1.0), "cell_size >= 4"),
        (lambda: SyntheticEMConfig(psf_sigma=-1.0), "finite number >= 0 for psf_sigma"),
        (lambda: SyntheticEMConfig(cell_grey=(200.0, 100.0)), "cell_grey"),
    ],
)
def test_bad_inputs_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
