"""Connected components of a thresholded map: the same partition for any block shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.instances import InstanceConfig, run_instances

from .conftest import write_probability_store

SHAPE = (9, 23, 17)


def blobs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(SHAPE), sigma=1.2)
    field = (field - field.min()) / (field.max() - field.min())
    return np.rint(field * 255).astype(np.uint8)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b have the same zero set and the same grouping of the rest."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bz=st.sampled_from([4, 9]), by=st.sampled_from([7, 23]), bx=st.sampled_from([6, 17]),
    seed=st.integers(0, 3),
)
def test_blockwise_components_equal_whole_volume_components(tmp_path_factory, bz: int, by: int, bx: int, seed: int) -> None:
    import cc3d

    prob = blobs(seed)
    url = write_probability_store(Path(tmp_path_factory.mktemp("cc")) / "p.zarr", prob, (bz, by, bx))
    config = InstanceConfig(method="components", mode="3d", seed_threshold=0.55, block_shape=(bz, by, bx),
                            thresholds=(0.5,), context=0)
    summary = run_instances(url, config)
    labels = np.asarray(zarr.open_group(url)["neuron_ids"][...])
    whole = cc3d.connected_components(prob.astype(np.float32) / np.float32(255) > np.float32(0.55), connectivity=6)
    assert whole.max() > 3  # the map has several components (the property is not vacuous)
    assert same_partition(labels, whole)
    assert summary.segments[0.5] == whole.max()
