"""`emunet agglomerate` and `emunet evaluate SEG GT` on label volumes, through the real app."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from pipeline.instances.volume_metrics import volume_scores

from .conftest import probability_from, voronoi_cells, write_probability_store


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    return voronoi_cells((7, 33, 29), 6, seed=11)


def test_agglomerate_then_evaluate_the_labels(app, runner, tmp_path, cells) -> None:
    url = write_probability_store(tmp_path / "out.zarr", probability_from(cells), (7, 11, 29))
    args = ["agglomerate", url, "--mode", "3d", "--block-shape", "7,11,29", "--context", "4", "--min-size", "10",
            "--thresholds", "0.2,0.4", "--workers", "0", "--json"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["num_blocks"] == 3 and summary["labels_threshold"] == 0.4

    gt = tmp_path / "gt.zarr"
    g = zarr.create_array(str(gt), shape=cells.shape, chunks=(7, 16, 16), dtype="int32")
    g[...] = cells
    scored = runner.invoke(app, ["evaluate", url, str(gt), "--json"])  # an agglomerate output: scored as labels
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    expected = volume_scores(np.asarray(zarr.open_group(url)["neuron_ids"][...]), cells)
    assert result["vi_split"] == pytest.approx(expected["vi_split"], abs=1e-12)
    assert result["adapted_rand_error"] == pytest.approx(expected["adapted_rand_error"], abs=1e-12)
    assert result["adapted_rand_error"] < 0.2 and 0 <= result["isbi"]["rand_error"] < 1


def test_bad_input_is_refused_before_any_output(app, runner, tmp_path, cells) -> None:
    url = write_probability_store(tmp_path / "out.zarr", probability_from(cells), (7, 11, 29))
    bad = runner.invoke(app, ["agglomerate", url, "--thresholds", "0.5,1.5", "--workers", "0"])
    assert bad.exit_code == 2 and "thresholds in (0, 1]" in bad.output
    assert "fragments" not in zarr.open_group(url, mode="r")

    floats = tmp_path / "f.zarr"
    zarr.create_array(str(floats), shape=cells.shape, chunks=cells.shape, dtype="float32")[...] = cells
    gt = tmp_path / "gt.zarr"
    zarr.create_array(str(gt), shape=cells.shape, chunks=cells.shape, dtype="int32")[...] = cells
    refused = runner.invoke(app, ["evaluate", str(floats), str(gt), "--segmentation"])
    assert refused.exit_code == 2 and "integer label array" in refused.output

    short = tmp_path / "s.zarr"
    zarr.create_array(str(short), shape=(6, 33, 29), chunks=(6, 33, 29), dtype="uint64")
    refused = runner.invoke(app, ["evaluate", str(short), str(gt)])
    assert refused.exit_code == 2 and "same shape" in refused.output


def test_voxel_size_mismatch_is_refused(app, runner, tmp_path, cells) -> None:
    seg = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w", zarr_format=3)
    seg.create_array("labels", shape=cells.shape, chunks=cells.shape, dtype="uint64")[...] = cells
    seg.attrs["emunet"] = {"voxel_size_nm": [8.0, 8.0, 8.0]}
    gt = zarr.open_group(str(tmp_path / "gt.zarr"), mode="w", zarr_format=3)
    gt.create_array("labels", shape=cells.shape, chunks=cells.shape, dtype="int32")[...] = cells
    gt.attrs["emunet"] = {"voxel_size_nm": [40.0, 4.0, 4.0]}
    refused = runner.invoke(app, ["evaluate", str(tmp_path / "seg.zarr"), f"{tmp_path / 'gt.zarr'}:labels"])
    assert refused.exit_code == 2 and "same voxel size" in refused.output
    gt.attrs["emunet"] = {"voxel_size_nm": [8.0, 8.0, 8.0]}
    same = runner.invoke(app, ["evaluate", str(tmp_path / "seg.zarr"), f"{tmp_path / 'gt.zarr'}:labels", "--json"])
    assert same.exit_code == 0 and json.loads(same.stdout)["vi_split"] == pytest.approx(0.0, abs=1e-12)


def test_a_segment_output_without_neuron_ids_is_no_label_volume(app, runner, tmp_path, cells) -> None:
    """Its OME image is the probability map: scored as labels it would print numbers (say with
    the arguments swapped, or --segmentation before `agglomerate`)."""
    from pipeline.output import ome_attrs, ome_dataset, ome_multiscale

    seg = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w", zarr_format=3)
    seg.create_array("probability", data=(cells > 3).astype("uint8") * 255)
    seg.attrs.update(ome_attrs([ome_multiscale("probability", [ome_dataset("probability", (1.0, 1.0, 1.0))])])
                     | {"emunet": {"plan": {}}})
    gt = zarr.open_group(str(tmp_path / "gt.zarr"), mode="w", zarr_format=3)
    gt.create_array("labels", data=cells)
    for args in ([f"{tmp_path / 'gt.zarr'}:labels", str(tmp_path / "seg.zarr")],
                 [str(tmp_path / "seg.zarr"), f"{tmp_path / 'gt.zarr'}:labels", "--segmentation"]):
        refused = runner.invoke(app, ["evaluate", *args])
        assert refused.exit_code == 2 and "an emunet output with `neuron_ids`" in " ".join(refused.output.split()), refused.output
