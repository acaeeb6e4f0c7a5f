"""The instance stage writes only into finished emunet segment outputs and replaces only its own nodes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.instances import InstanceConfig, InstancesExistError, run_instances

from .conftest import probability_from, voronoi_cells, write_probability_store

CONFIG = InstanceConfig(mode="3d", block_shape=(4, 20, 18), context=4, min_size=5, thresholds=(0.3, 0.5))


@pytest.fixture(scope="module")
def prob() -> np.ndarray:
    return probability_from(voronoi_cells((7, 20, 18), 5, seed=8))  # odd z: a cut last block


def _members(url) -> dict[str, object]:
    return {name: np.asarray(node[...]) if isinstance(node, zarr.Array) else None
            for name, node in zarr.open_group(str(url), mode="r").members(max_depth=None)}


def test_stores_emunet_did_not_segment_are_refused_and_left_as_they_were(tmp_path, prob) -> None:
    foreign = zarr.open_group(str(tmp_path / "theirs.zarr"), mode="w", zarr_format=3)
    foreign.create_array("probability", data=prob, chunks=(4, 20, 18), dimension_names=("z", "y", "x"))
    imported = zarr.open_group(str(tmp_path / "imported.zarr"), mode="w", zarr_format=3)
    imported.create_array("probability", data=prob, chunks=(4, 20, 18), dimension_names=("z", "y", "x"))
    imported.attrs["emunet_import"] = {"source": "raw.tif"}
    for url, what in ((tmp_path / "theirs.zarr", "a store emunet did not write"),
                      (tmp_path / "imported.zarr", "a volume `emunet import` wrote")):
        before = _members(url)
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(ValueError, match=f"expected an `emunet segment` output at .*, got {what}"):
                run_instances(str(url), CONFIG, **flags)
        assert _members(url).keys() == before.keys()


def test_a_users_own_neuron_ids_is_never_replaced(tmp_path, prob) -> None:
    url = write_probability_store(tmp_path / "out.zarr", prob, (4, 20, 18))
    theirs = np.arange(prob.size, dtype=np.uint64).reshape(prob.shape)
    zarr.open_group(url)["neuron_ids"] = theirs  # put there by the user, without the stage's mark
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(InstancesExistError, match="`neuron_ids` .* a Zarr node that the instance stage did not write"):
            run_instances(url, CONFIG, **flags)
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["neuron_ids"][...], theirs)
    assert "fragments" not in group and "instances" not in group


def test_the_mask_label_image_and_neuron_ids_live_side_by_side(tmp_path, prob) -> None:
    """`segment --mask` keeps the mask's NGFF label image in `labels/`; the stage neither needs
    the name nor touches the group, on a first run or on --overwrite."""
    from pipeline.labels import MASK_LABEL_ARRAY, create_mask_labels
    from pipeline.output import zstd

    url = write_probability_store(tmp_path / "out.zarr", prob, (4, 20, 18))
    group = zarr.open_group(url)
    create_mask_labels(group, shape=prob.shape, chunks=(4, 20, 18), shards=None, voxel_size=(1, 1, 1),
                       compressors=zstd(), attributes={})
    group[MASK_LABEL_ARRAY][...] = prob >= 128
    first = run_instances(url, CONFIG)
    again = run_instances(url, CONFIG, overwrite=True)
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group[MASK_LABEL_ARRAY][...], prob >= 128)
    assert group["labels"].attrs["labels"] == ["mask"] and first.segments == again.segments
    assert len(np.unique(group["neuron_ids"][...])) > 2


def test_a_store_of_an_earlier_version_is_relabelled_into_neuron_ids(tmp_path, prob) -> None:
    """An earlier version named the array `labels`: on resume the relabel marks (which were for
    that array) are reset, so `neuron_ids` is filled, and the superseded `labels` goes."""
    url = write_probability_store(tmp_path / "out.zarr", prob, (4, 20, 18))
    run_instances(url, CONFIG)
    done = zarr.open_group(url, mode="r")["neuron_ids"][...]
    (tmp_path / "out.zarr" / "neuron_ids").rename(tmp_path / "out.zarr" / "labels")  # the old layout
    run_instances(url, CONFIG, resume=True)
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["neuron_ids"][...], done)
    assert "labels" not in group


def test_an_unfinished_segment_output_is_refused(tmp_path) -> None:
    """Blocks that never ran read as membrane: the stage waits for `segment --resume`."""
    import torch

    from pipeline.blocks import run_plan_locally
    from pipeline.ledger import Ledger
    from pipeline.plan import make_plan
    from tests.pipeline.conftest import write_zarr
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    prob = probability_from(voronoi_cells((6, 24, 16), 5, seed=8))  # blocks on the model's lattice
    config = InstanceConfig(**{**CONFIG.to_dict(), "thresholds": CONFIG.thresholds, "block_shape": (3, 24, 16)})
    write_zarr(tmp_path / "in.zarr", prob, (1, 24, 16))
    torch.manual_seed(0)
    model = UNet(preset("tiny").replace(base_channels=2)).eval()
    url = str(tmp_path / "seg.zarr")
    plan = make_plan(str(tmp_path / "in.zarr"), url, prob.shape, model.config, block_shape=(3, 24, 16))
    run_plan_locally(plan, predictor=TilePredictor(model, Normalization(), PredictConfig(device="cpu")))
    stored = zarr.open_group(url)["probability"]  # cells and membranes to find, in the stored units
    stored[...] = prob if stored.dtype == np.uint8 else prob.astype(np.float32) / 255
    Ledger.open(url).unmark_done(1)
    with pytest.raises(ValueError, match=r"expected a finished segment output, got 1 of 2 blocks done .*--resume"):
        run_instances(url, config)
    assert "fragments" not in zarr.open_group(url, mode="r")
    Ledger.open(url).mark_done(1)
    assert run_instances(url, config).fragments > 0


def test_auto_mode_on_a_placeholder_voxel_size_says_so(tmp_path, prob) -> None:
    """An input imported without --voxel-size has 1 nm as a placeholder: auto mode then picks
    3D on no evidence, and the summary (and log) say which flag decides."""
    from pipeline.importer import import_volume
    from pipeline.volume import open_volume

    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "x.tif", prob[:2], photometric="minisblack")
    assert open_volume(str(import_volume(tmp_path / "x.tif", tmp_path / "a.zarr").url)).voxel_size_source == "default"
    assert open_volume(str(import_volume(tmp_path / "x.tif", tmp_path / "b.zarr", voxel_size=(50, 4, 4)).url)).voxel_size_source == "ome"

    url = write_probability_store(tmp_path / "out.zarr", prob, (4, 20, 18))
    group = zarr.open_group(url)
    group.attrs["emunet"] = {**group.attrs["emunet"], "input": {"voxel_size_source": "default"}}
    said: list[str] = []
    summary = run_instances(url, InstanceConfig(**{**CONFIG.to_dict(), "thresholds": CONFIG.thresholds, "mode": "auto"}),
                            log=said.append)
    (note,) = summary.notes
    assert summary.mode == "3d" and "placeholder" in note and "--mode 2d" in note and f"warning: {note}" in said
    assert run_instances(url, CONFIG, overwrite=True).notes == ()  # the mode was given
