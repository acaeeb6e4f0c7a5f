"""Metrics of label volumes over blocks on Dask = scikit-image and the in-memory ISBI metrics."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from pipeline.instances.volume_metrics import LabelSource, isbi_labels, volume_scores
from pipeline.metrics.evaluate import evaluate_stack
from pipeline.metrics.labels import label4
from pipeline.metrics.thinning import thin_boundaries


def random_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = ndimage.zoom(rng.integers(0, 9, (4, 6, 5)), (3, 3, 3), order=0)[:11, :17, :13].astype(np.int32)
    seg = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 50, gt.shape), gt * 7 % 11).astype(np.uint64)
    return seg, gt


def write(path, data, chunks) -> LabelSource:
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data
    return LabelSource(str(path))


@pytest.mark.parametrize("block", [(11, 17, 13), (2, 5, 4), (4, 3, 13)])
def test_blockwise_scores_equal_scikit_image(block: tuple[int, int, int]) -> None:
    seg, gt = random_pair(block[1])
    got = volume_scores(seg, gt, block_shape=block)
    split, merge = variation_of_information(gt, seg, ignore_labels=[0])  # (H(seg|gt), H(gt|seg)) in bits
    assert got["vi_split"] == pytest.approx(split, abs=1e-9)
    assert got["vi_merge"] == pytest.approx(merge, abs=1e-9)
    assert got["adapted_rand_error"] == pytest.approx(adapted_rand_error(gt, seg)[0], abs=1e-9)
    assert got["cremi_score"] == pytest.approx(np.sqrt(got["adapted_rand_error"] * (split + merge)), abs=1e-9)


def test_scores_on_the_cluster_from_zarr_equal_in_memory(tmp_path, client) -> None:
    seg, gt = random_pair(5)
    on_dask = volume_scores(write(tmp_path / "s.zarr", seg, (3, 4, 5)), write(tmp_path / "g.zarr", gt, (5, 5, 5)),
                            block_shape=(3, 8, 5), client=client)
    in_memory = volume_scores(seg, gt)
    assert on_dask == pytest.approx(in_memory, abs=1e-12)
    assert on_dask["vi_split"] > 0.1 and on_dask["adapted_rand_error"] > 0.05  # not a trivial pair


def test_bad_label_pairs_are_refused() -> None:
    seg, gt = random_pair(1)
    with pytest.raises(ValueError, match="same shape"):
        volume_scores(seg[:-1], gt)
    with pytest.raises(ValueError, match="integer label array"):
        volume_scores(seg.astype(np.float32), gt)


@pytest.mark.realdata
def test_isbi_label_scores_equal_the_in_memory_isbi_metrics(isbi_labels_real, client) -> None:
    """A binary map scored by `evaluate_stack` = its segmentation scored as labels, on ISBI slices."""
    gt = isbi_labels_real
    rng = np.random.default_rng(0)
    pred = (ndimage.binary_erosion(gt > 0, iterations=1) | (rng.random(gt.shape) < 0.002)).astype(np.uint8)
    reference = evaluate_stack(pred, gt)
    plain = np.stack([label4(p)[0] for p in pred])
    thinned = np.stack([thin_boundaries(p > 0)[0] for p in pred])
    as_plain = isbi_labels(plain, gt, slices_per_task=1, client=client)
    as_thinned = isbi_labels(thinned, gt, slices_per_task=2)
    assert as_plain["rand_error_2012"] == pytest.approx(reference["rand_error_2012"], abs=1e-12)
    assert as_thinned["rand_error"] == pytest.approx(reference["rand_error"], abs=1e-12)
    assert as_thinned["info_error"] == pytest.approx(reference["info_error"], abs=1e-12)
    assert 0 < reference["rand_error"] < 1


@pytest.fixture(scope="module")
def isbi_labels_real(isbi_labels):
    return np.asarray(isbi_labels[16:19, :200, 100:300])


@pytest.mark.realdata
def test_isbi_probability_slice_by_slice_on_the_cluster_equals_evaluate_stack(isbi_labels_real, tmp_path, client) -> None:
    from pipeline.instances.volume_metrics import isbi_probability

    gt = isbi_labels_real
    smooth = ndimage.gaussian_filter((gt > 0).astype(np.float32), (0, 2, 2))
    pred = np.clip(np.rint((0.8 * smooth + 0.1) * 255), 0, 255).astype(np.uint8)
    got = isbi_probability(write(tmp_path / "p.zarr", pred, (1, 64, 64)), write(tmp_path / "g.zarr", gt, (2, 100, 100)),
                           slices_per_task=2, client=client)
    reference = evaluate_stack(pred, gt)
    for key in ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error", "warping_error_jain"):
        assert got[key] == pytest.approx(reference[key], abs=1e-12), key
    assert reference["rand_error"] > 0 or reference["warping_error"] > 0
