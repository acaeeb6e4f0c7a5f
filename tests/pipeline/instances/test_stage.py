"""The instance stage end to end on a real LocalCluster: labels, store layout, resume, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from skimage.metrics import adapted_rand_error

from pipeline.instances import InstanceConfig, InstancesExistError, run_instances

from .conftest import probability_from, voronoi_cells, write_probability_store

CONFIG = InstanceConfig(mode="3d", block_shape=(10, 16, 24), context=6, min_size=10,
                        thresholds=(0.2, 0.4, 0.6), labels_threshold=0.4)


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return voronoi_cells((19, 45, 38), 12, seed=3)  # odd shape: every block grid has a cut last block


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, cells, client):
    """A store run on the cluster, its summary, and its probability."""
    prob = probability_from(cells)
    url = write_probability_store(tmp_path_factory.mktemp("stage") / "out.zarr", prob, (5, 8, 8))
    return url, run_instances(url, CONFIG, client=client), prob


def labels_of(url: str) -> np.ndarray:
    return np.asarray(zarr.open_group(url, mode="r")["neuron_ids"][...])


def test_cluster_labels_equal_in_process_labels_and_beat_thresholding(clustered, cells, tmp_path) -> None:
    import cc3d

    url, summary, prob = clustered
    local = write_probability_store(tmp_path / "local.zarr", prob, (5, 8, 8))
    run_instances(local, CONFIG)
    labels = labels_of(url)
    np.testing.assert_array_equal(labels, labels_of(local))
    assert summary.num_blocks == 2 * 3 * 2 and summary.tree_levels == 2
    assert len(np.unique(labels)) == summary.segments[0.4]
    thresholded = cc3d.connected_components(prob > 127, connectivity=6)
    ours = adapted_rand_error(cells, labels)[0]
    assert ours < adapted_rand_error(cells, thresholded)[0] and ours < 0.15
    # most cells are one segment across the block faces that cut them: the tree undoes the cuts
    whole_cells = 0
    for cell in np.unique(cells):
        core = cells == cell
        _, counts = np.unique(labels[core], return_counts=True)
        whole_cells += counts.max() > 0.8 * core.sum()
    assert whole_cells >= 10, whole_cells


def test_labels_open_in_xarray_with_provenance(clustered) -> None:
    url, _, _ = clustered
    ds = xr.open_zarr(url, consolidated=False)
    lab = ds["neuron_ids"]
    assert lab.dims == ("z", "y", "x") and lab.dtype == np.uint64 and lab.shape == (19, 45, 38)
    assert zarr.open_group(url, mode="r")["neuron_ids"].chunks == zarr.open_group(url, mode="r")["probability"].chunks
    attrs = zarr.open_group(url, mode="r")["neuron_ids"].attrs.asdict()
    assert attrs["image-label"]["source"]["image"] == "../probability"
    assert attrs["emunet"]["threshold"] == 0.4 and attrs["emunet"]["thresholds"] == [0.2, 0.4, 0.6]


def test_fragment_ids_are_unique_per_block(clustered) -> None:
    url, _, _ = clustered
    frag = np.asarray(zarr.open_group(url, mode="r")["fragments"][...])
    stride = 10 * 16 * 24
    for z, y, x in np.ndindex(2, 3, 2):
        block = frag[z * 10 : (z + 1) * 10, y * 16 : (y + 1) * 16, x * 24 : (x + 1) * 24]
        bid = (z * 3 + y) * 2 + x
        assert ((block - 1) // stride == bid).all()


def test_interrupted_run_resumes_and_other_threshold_only_relabels(clustered, tmp_path) -> None:
    url, summary, _ = clustered
    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(url, copy)
    expected = labels_of(copy)
    root = Path(copy)
    # interrupt: the last tree level and the relabel never happened for these
    shutil.rmtree(root / "ledger/instances/tree-l2")
    for marker in list((root / "ledger/instances/relabel-t1/done").rglob("*"))[:5]:
        if marker.is_file():
            marker.unlink()
    zarr.open_group(copy)["neuron_ids"][...] = 0
    frag_files = {p: p.stat().st_mtime_ns for p in (root / "fragments").rglob("*") if p.is_file()}
    run_instances(copy, CONFIG, resume=True)
    assert {p: p.stat().st_mtime_ns for p in frag_files} == frag_files  # fragments not recomputed
    relabelled = labels_of(copy)
    np.testing.assert_array_equal(relabelled[relabelled > 0], expected[relabelled > 0])
    # the blocks whose relabel was still marked done kept the zeros: resume trusts the ledger
    assert (relabelled > 0).sum() > 0

    again = InstanceConfig(**{**CONFIG.to_dict(), "thresholds": CONFIG.thresholds, "labels_threshold": 0.2,
                              "block_shape": CONFIG.block_shape})
    relabelled_only = run_instances(copy, again, resume=True)
    assert len(np.unique(labels_of(copy))) == relabelled_only.segments[0.2] > summary.segments[0.4]
    run_instances(copy, CONFIG, resume=True)  # back to 0.4: relabelled again, not trusted from before
    np.testing.assert_array_equal(labels_of(copy), labels_of(url))


def test_bad_input_fails_before_any_output(tmp_path, cells) -> None:
    prob = probability_from(cells)
    url = write_probability_store(tmp_path / "a.zarr", prob, (5, 8, 8))
    run_instances(url, CONFIG)
    with pytest.raises(InstancesExistError, match="--resume"):
        run_instances(url, CONFIG)
    other = InstanceConfig(**{**CONFIG.to_dict(), "thresholds": (0.3,), "labels_threshold": None,
                              "block_shape": CONFIG.block_shape})
    with pytest.raises(ValueError, match="differences: thresholds"):
        run_instances(url, other, resume=True)

    boundary = write_probability_store(tmp_path / "b.zarr", np.zeros((4, 9, 7), np.uint8), (2, 3, 7))
    with pytest.raises(ValueError, match="all-boundary"):
        run_instances(boundary, InstanceConfig(block_shape=(2, 3, 7)))
    assert "fragments" not in zarr.open_group(boundary, mode="r")

    flat = tmp_path / "flat.zarr"
    g = zarr.open_group(str(flat), mode="w", zarr_format=3)
    g.create_array("probability", shape=(9, 7), chunks=(3, 7), dtype="uint8", dimension_names=("y", "x"))
    with pytest.raises(ValueError, match=r"expected 'probability' with dims \('z', 'y', 'x'\)"):
        run_instances(str(flat))
    with pytest.raises(ValueError, match="multiple of the probability chunks"):
        run_instances(url, InstanceConfig(block_shape=(4, 16, 24)), overwrite=True)


def test_map_check_reads_a_sample_and_reduces_in_full_only_when_unsettled(tmp_path) -> None:
    """Cells in one chunk that the sample skips: the full reduction finds them (no false refusal)."""
    from pipeline.instances.driver import _check_map, _sample_range, prepare

    prob = np.zeros((4, 9, 7), np.uint8)
    prob[0:2, 3:6] = 255  # chunk (0, 1, 0) only, flat index 1 of the 2 × 3 × 1 grid
    url = write_probability_store(tmp_path / "one.zarr", prob, (2, 3, 7))
    job = prepare(url, InstanceConfig(block_shape=(2, 3, 7)))
    assert _sample_range(job.group("r")["probability"], 4) == (0.0, 0.0)  # the sample alone would refuse
    _check_map(job, None)  # the full reduction sees the cells
    prob[0:2, 3:6] = 0
    empty = prepare(write_probability_store(tmp_path / "none.zarr", prob, (2, 3, 7)), InstanceConfig(block_shape=(2, 3, 7)))
    with pytest.raises(ValueError, match="all-boundary"):
        _check_map(empty, None)


def test_partition_barely_depends_on_the_block_shape(clustered, tmp_path) -> None:
    """Watershed + agglomeration: blocked vs one block; pieces of a cut basin are joined."""
    from pipeline.instances.volume_metrics import volume_scores

    url, _, prob = clustered
    whole = write_probability_store(tmp_path / "whole.zarr", prob, (5, 8, 8))
    run_instances(whole, InstanceConfig(**{**CONFIG.to_dict(), "thresholds": CONFIG.thresholds, "block_shape": (20, 48, 40)}))
    change = volume_scores(labels_of(url), labels_of(whole) + 1)  # +1: no voxel ignored
    assert change["vi"] < 0.3 and change["adapted_rand_error"] < 0.05, change
    seen: dict[int, set[str]] = {}
    for f in (Path(url) / "instances" / "graph").iterdir():
        graph = np.load(f)
        for basin in np.unique(np.concatenate([graph["a"], graph["b"]])).tolist():
            seen.setdefault(basin, set()).add(f.name)
    assert sum(len(blocks) > 1 for blocks in seen.values()) > 0  # basins cut by faces, recognised by seed


def test_no_tree_node_reads_all_edges(clustered) -> None:
    """The reduction never gathers the region graph: each node reads only pending edges."""
    url, summary, _ = clustered
    root = Path(url) / "instances"
    total = sum(np.load(f)["u"].size for f in (root / "graph").iterdir())
    for level in range(summary.tree_levels):  # what nodes of level + 1 read
        read = [np.load(f)["a"].size for f in (root / "tree" / "e" / f"l{level}").iterdir()]
        assert sum(read) < 0.9 * total, (level, sum(read), total)
    top = [np.load(f)["a"].size for f in (root / "tree" / "e" / f"l{summary.tree_levels}").iterdir()]
    assert top == [0]  # everything decided at the top


def test_sharded_probability_gives_sharded_labels_equal_to_unsharded(tmp_path, cells) -> None:
    prob = probability_from(cells)
    group = zarr.open_group(str(tmp_path / "sharded.zarr"), mode="w", zarr_format=3)
    group.create_array("probability", shape=prob.shape, chunks=(5, 8, 8), shards=(10, 16, 24), dtype="uint8",
                       dimension_names=("z", "y", "x"))[...] = prob
    group.attrs["emunet"] = {"voxel_size_nm": [1.0, 1.0, 1.0]}
    run_instances(str(tmp_path / "sharded.zarr"), CONFIG)
    plain = write_probability_store(tmp_path / "plain.zarr", prob, (5, 8, 8))
    run_instances(plain, CONFIG)
    labels = zarr.open_group(str(tmp_path / "sharded.zarr"), mode="r")["neuron_ids"]
    assert labels.shards == (10, 16, 24) and labels.chunks == (5, 8, 8)
    np.testing.assert_array_equal(labels[...], labels_of(plain))
    with pytest.raises(ValueError, match="multiple of the probability shards"):
        run_instances(str(tmp_path / "sharded.zarr"), InstanceConfig(block_shape=(5, 16, 24)), overwrite=True)
