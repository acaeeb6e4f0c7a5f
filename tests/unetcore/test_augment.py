"""Augmentation keeps image, labels and weights aligned; the elastic field is the paper's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetcore import geometry
from unetcore.augment import AugmentConfig, elastic_displacement, sample_tile


def _stripes(shape=(61, 75)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image = labels (distinct values per region) so alignment is checkable pixel by pixel."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = ((yy // 9 + xx // 13) % 2).astype(np.int64)
    image = labels.astype(np.float32) * 2.0 - 1.0
    weights = labels.astype(np.float32) * 5.0 + 1.0
    return image, labels, weights


@pytest.mark.parametrize("seed", range(6))
def test_labels_weights_and_image_stay_aligned(seed: int) -> None:
    image, labels, weights = _stripes()
    rng = np.random.default_rng(seed)
    config = AugmentConfig(gamma=0.0, contrast=0.0, brightness=0.0)
    tile = sample_tile(image, labels, weights, (40, 48), (20, 28), rng, config)
    inner = tile.image[0, 10:30, 10:38]
    # Away from label edges the cubic image value must agree with the nearest label.
    interior = ndimage.binary_erosion(tile.labels == 1, iterations=2) | ndimage.binary_erosion(tile.labels == 0, iterations=2)
    assert interior.sum() > 50
    assert np.all((inner[interior] > 0) == (tile.labels[interior] == 1))
    # Weights (linear) follow the labels too: always nearer their own label's value (1 or
    # 6) than the other's; at a checker corner the 2×2 interpolation may mix in a diagonal.
    assert np.all(np.abs(tile.weights[interior] - (tile.labels[interior] * 5 + 1)) < 2.5)
    assert np.median(np.abs(tile.weights[interior] - (tile.labels[interior] * 5 + 1))) < 1e-5


def test_shapes_and_dtypes() -> None:
    image, labels, weights = _stripes()
    tile = sample_tile(image, labels, None, (44, 52), (4, 12), np.random.default_rng(0))
    assert tile.image.shape == (1, 44, 52) and tile.image.dtype == np.float32
    assert tile.labels.shape == (4, 12) and tile.labels.dtype == np.int64
    assert np.all(tile.weights == 1)


def test_no_augmentation_is_a_plain_crop_with_mirror() -> None:
    """With everything off the tile is a shifted crop; outside the image it mirrors."""
    image = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    labels = np.arange(30 * 40).reshape(30, 40).astype(np.int64)
    tile = sample_tile(image, labels, None, (50, 50), (10, 10), np.random.default_rng(1), AugmentConfig.off())
    # Every label is an image pixel's (mirror, never zeros), and rows are image rows.
    assert set(np.unique(tile.labels)) <= set(labels.ravel())
    assert len({int(v) // 40 for v in tile.labels[0]}) == 1
    # The image is the cubic interpolation of the same shifted grid: steps of 1 along rows
    # inside, 0 where the mirror repeats the edge column (cubic overshoot stays < 1).
    diffs = np.abs(np.diff(tile.image[0], axis=1))
    assert np.all(diffs < 1.5)


def test_training_mirror_is_the_inference_mirror() -> None:
    """Beyond the image, tiles repeat the edge pixel exactly as inference's np.pad does.

    Labels hold their column index; a tile far wider than the image crosses both edges
    several times, so each row is a window of the column indices padded the inference way
    (numpy "symmetric": ... 1 0 | 0 1 2 3 4 | 4 3 ...), never scipy's "mirror" (1 | 0 1).
    """
    image = np.zeros((5, 5), dtype=np.float32)
    labels = np.tile(np.arange(5), (5, 1)).astype(np.int64)
    padded = np.pad(np.arange(5), 60, mode=geometry.MIRROR)
    other = np.pad(np.arange(5), 60, mode="reflect")  # numpy "reflect" = scipy "mirror"
    windows = np.lib.stride_tricks.sliding_window_view(padded, 31)
    other_windows = np.lib.stride_tricks.sliding_window_view(other, 31)
    for seed in range(5):
        tile = sample_tile(image, labels, None, (51, 51), (31, 31), np.random.default_rng(seed), AugmentConfig.off())
        row = tile.labels[15]
        assert (windows == row).all(axis=1).any(), row
        assert not (other_windows == row).all(axis=1).any(), row


def test_elastic_field_statistics() -> None:
    """Coarse 3×3 displacements ~ N(0, 10 px): the field at the grid nodes has std ≈ 10."""
    rng = np.random.default_rng(0)
    corners = []
    for _ in range(300):
        d = elastic_displacement((33, 33), rng, grid=3, sigma=10.0)
        corners.extend([d[0, 0, 0], d[1, 16, 16], d[0, 32, 32]])  # grid nodes
    assert np.std(corners) == pytest.approx(10.0, rel=0.1)
    d = elastic_displacement((33, 33), np.random.default_rng(1))
    assert d.shape == (2, 33, 33)
    # Smooth: neighbouring pixels move almost together (cubic interpolation of a 3×3 grid).
    assert np.abs(np.diff(d, axis=1)).max() < 5


def test_3d_tiles() -> None:
    vol = np.random.default_rng(0).normal(size=(12, 30, 30)).astype(np.float32)
    lab = (vol > 0).astype(np.int64)
    tile = sample_tile(vol, lab, None, (8, 20, 20), (4, 8, 8), np.random.default_rng(0))
    assert tile.image.shape == (1, 8, 20, 20) and tile.labels.shape == (4, 8, 8)


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="expected image, labels and weights of one shape"):
        sample_tile(np.zeros((10, 10)), np.zeros((10, 11), int), None, (8, 8), (4, 4), np.random.default_rng(0))
