"""Bad input never becomes a plausible-looking wrong result with exit 0.

Through the real CLI: colour TIFFs, grey values outside the model's range, missing chunks,
OME axes in another order, a replaced input under --resume, swapped evaluate arguments.
Each is refused (or warned about) with a message naming the fix, or read correctly: then
the result equals that of the same data in the plain form.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.reliability.conftest import CHUNKS, write_zarr

BLOCK = ["--block", "2", "24", "24"]


def _flat(text: str) -> str:
    return " ".join(text.lower().split())


def _segment(cli, runner, inp, out, checkpoint, scheduler, *extra) -> tuple[int, str]:
    args = ["segment", str(inp), str(out), "--model", str(checkpoint), *BLOCK, "--scheduler", scheduler, "--no-flow", *extra]
    result = runner.invoke(cli, args)
    return result.exit_code, result.output


def _probability(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "probability"), mode="r")[...]


@pytest.fixture(scope="module")
def reference(cli, runner, tmp_path_factory, image, checkpoint, local_scheduler) -> np.ndarray:
    """The uint8 volume's probability: what every correctly read variant must give."""
    root = tmp_path_factory.mktemp("reference")
    inp = write_zarr(root / "u8.zarr", image, CHUNKS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")  # as every test of this package runs
        code, output = _segment(cli, runner, inp, root / "ref.zarr", checkpoint, local_scheduler)
    assert code == 0, output
    return _probability(root / "ref.zarr")


# -- one TIFF reader -------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["rgb", "planar"])
def test_predict_refuses_colour_tiffs(layout, cli, runner, tmp_path, image, checkpoint) -> None:
    """`import` refused colour samples; `predict` now reads TIFFs with the same rules."""
    path = tmp_path / f"{layout}.tif"
    if layout == "rgb":
        tifffile.imwrite(path, np.stack([image[0]] * 3, axis=-1), photometric="rgb")
    else:
        tifffile.imwrite(path, np.stack([image[0]] * 4), photometric="rgb", planarconfig="separate", extrasamples=[0])
    result = runner.invoke(cli, ["predict", str(path), str(tmp_path / "p.tif"), "--model", str(checkpoint)])
    assert result.exit_code == 2, result.output
    assert "colour samples or channels" in _flat(result.output) and "greyscale" in _flat(result.output)
    assert not (tmp_path / "p.tif").exists()


# -- grey values -----------------------------------------------------------------------------
def test_float_volume_in_0_255_is_refused_and_read_right_with_its_range(cli, runner, tmp_path, image, checkpoint, local_scheduler, reference) -> None:
    inp = write_zarr(tmp_path / "f.zarr", image.astype("float32"), CHUNKS)  # 0–255 in float32
    for path in ("--no-flow", "--flow"):
        args = ["segment", str(inp), str(tmp_path / "o.zarr"), "--model", str(checkpoint), *BLOCK, "--scheduler", local_scheduler, path]
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        message = _flat(result.output)
        assert "expected grey values in [0, 1]" in message and "--grey-range 0 255" in message, result.output
        assert not (tmp_path / "o.zarr").exists()
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler, "--grey-range", "0", "255")
    assert code == 0, output
    np.testing.assert_array_equal(_probability(tmp_path / "o.zarr"), reference)
    attrs = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["emunet"]["input"]
    assert attrs["grey_range"] == [0.0, 255.0] and attrs["grey_range_source"] == "given"


def test_12_bit_data_in_uint16_is_warned_about_and_read_right_with_its_range(cli, runner, tmp_path, image, checkpoint, local_scheduler, reference) -> None:
    twelve = np.rint(image.astype(np.float64) * (4095 / 255)).astype("uint16")
    inp = write_zarr(tmp_path / "u12.zarr", twelve, CHUNKS)
    code, output = _segment(cli, runner, inp, tmp_path / "dark.zarr", checkpoint, local_scheduler)
    assert code == 0, output
    assert "warning" in _flat(output) and "--grey-range 0 4095 (12-bit data)" in _flat(output), output
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler, "--grey-range", "0", "4095")
    assert code == 0, output
    assert "warning" not in _flat(output)
    # 12-bit rounding of the grey values moves p by at most a few steps of 1/255.
    diff = np.abs(_probability(tmp_path / "o.zarr").astype(int) - reference.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())
    dark = np.abs(_probability(tmp_path / "dark.zarr").astype(int) - reference.astype(int))
    assert dark.mean() > 10 * max(diff.mean(), 0.1)  # without the range it is really wrong
    # The range stored with the volume is used without the flag (emunet import --grey-range).
    zarr.open_array(str(inp), mode="r+").attrs["emunet"] = {"grey_range": [0, 4095]}
    code, output = _segment(cli, runner, inp, tmp_path / "stored.zarr", checkpoint, local_scheduler)
    assert code == 0 and "warning" not in _flat(output), output
    np.testing.assert_array_equal(_probability(tmp_path / "stored.zarr"), _probability(tmp_path / "o.zarr"))


def test_predict_float_tiff_in_0_255(cli, runner, tmp_path, image, checkpoint) -> None:
    tifffile.imwrite(tmp_path / "u8.tif", image[:1])
    tifffile.imwrite(tmp_path / "f.tif", image[:1].astype("float32"))
    base = ["--model", str(checkpoint), "--device", "cpu"]
    result = runner.invoke(cli, ["predict", str(tmp_path / "f.tif"), str(tmp_path / "f-p.tif"), *base])
    assert result.exit_code == 2 and "--grey-range 0 255" in _flat(result.output), result.output
    assert runner.invoke(cli, ["predict", str(tmp_path / "u8.tif"), str(tmp_path / "u8-p.tif"), *base]).exit_code == 0
    result = runner.invoke(cli, ["predict", str(tmp_path / "f.tif"), str(tmp_path / "f-p.tif"), *base, "--grey-range", "0", "255"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f-p.tif"), tifffile.imread(tmp_path / "u8-p.tif"))


# -- missing chunks --------------------------------------------------------------------------
def test_a_missing_input_chunk_fails_its_blocks_unless_sparse(cli, runner, tmp_path, image, checkpoint, local_scheduler, reference) -> None:
    from pipeline.ledger import Ledger

    inp = write_zarr(tmp_path / "in.zarr", image, CHUNKS)
    (inp / "c" / "3" / "1" / "0").unlink()  # chunk (3, 1, 0): voxels z 3, y 24:48, x 0:24
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler)
    assert code == 1, output
    summary = Ledger(str(tmp_path / "o.zarr"), 8).summary()
    assert summary.failed_ids and all("chunk (3, 1, 0)" in f.error and "--sparse" in f.error for f in summary.failed)
    assert set(summary.failed_ids) >= {6}  # the block at z 2:4, y 24:48, x 0:24 reads it
    assert "the input lacks chunks" in _flat(output) and "--resume --sparse" in _flat(output), output  # not "retry"
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler, "--resume", "--sparse")
    assert code == 0, output  # the advice works


def test_an_enlarged_shape_is_not_predicted_from_zeros(cli, runner, tmp_path, image, checkpoint, local_scheduler) -> None:
    inp = write_zarr(tmp_path / "in.zarr", image, CHUNKS)
    meta = json.loads((inp / "zarr.json").read_text())
    meta["shape"] = [4, 96, 96]  # ¾ of the volume has no chunks
    (inp / "zarr.json").write_text(json.dumps(meta))
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler, "--json")
    assert code == 1, output
    result = json.loads(output[output.index("{"):])
    # Every block's read region (block + the model's context of 44 voxels) reaches the
    # chunks that are not there: none is computed from zeros, each names a missing chunk.
    assert result["computed"] == 0 and len(result["failed"]) == 32
    assert all("missing from the store" in f["error"] and "enlarged shape" in f["error"] for f in result["failed"])


# -- OME axes --------------------------------------------------------------------------------
def _ome(path: Path, data: np.ndarray, axes: str, scale: list[float]) -> Path:
    from pipeline.output import ome_attrs

    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=data, chunks=tuple(min(24, s) for s in data.shape))
    kinds = {"c": "channel", "t": "time"}
    meta = [{"name": a, "type": kinds.get(a, "space"), **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes]
    group.attrs.update(ome_attrs([{"version": "0.4", "axes": meta, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]))  # fmt: skip
    return path


def test_ome_axes_x_y_z_are_read_transposed_with_their_scale(cli, runner, tmp_path, image, checkpoint, local_scheduler, reference) -> None:
    inp = _ome(tmp_path / "xyz.zarr", image.transpose(2, 1, 0).copy(), "xyz", [0.004, 0.004, 0.05])
    code, output = _segment(cli, runner, inp, tmp_path / "o.zarr", checkpoint, local_scheduler)
    assert code == 0, output
    np.testing.assert_array_equal(_probability(tmp_path / "o.zarr"), reference)
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["emunet"]["voxel_size_nm"] == [50.0, 4.0, 4.0]


@pytest.mark.parametrize("axes, shape, says", [("cyx", (3, 48, 48), "a (c, y, x) image is one 2d plane"),
                                               ("czyx", (2, 4, 48, 48), "c: 2")])
def test_ome_channel_axes_are_refused(axes, shape, says, cli, runner, tmp_path, checkpoint) -> None:
    inp = _ome(tmp_path / f"{axes}.zarr", np.zeros(shape, "uint8"), axes, [1.0] * len(shape))
    result = runner.invoke(cli, ["segment", str(inp), str(tmp_path / "o.zarr"), "--model", str(checkpoint), "--no-flow"])
    assert result.exit_code == 2 and says in _flat(result.output), result.output
    assert not (tmp_path / "o.zarr").exists()


# -- resume ----------------------------------------------------------------------------------
def test_resume_after_the_input_was_replaced_is_refused(cli, runner, tmp_path, image, checkpoint, local_scheduler) -> None:
    from pipeline.ledger import Ledger

    inp = write_zarr(tmp_path / "in.zarr", image, CHUNKS)
    out = tmp_path / "o.zarr"
    assert _segment(cli, runner, inp, out, checkpoint, local_scheduler)[0] == 0
    Ledger(str(out), 8).unmark_done(7)  # as if the run had stopped before block 7 (roll-up first)
    shutil.rmtree(inp)
    write_zarr(inp, image[:, ::-1].copy(), CHUNKS)  # another volume, same path and shape
    before = _probability(out)
    code, output = _segment(cli, runner, inp, out, checkpoint, local_scheduler, "--resume")
    assert code == 2, output
    assert "an input that changed since" in _flat(output) and "differ" in _flat(output), output
    np.testing.assert_array_equal(_probability(out), before)
    assert Ledger(str(out), 8).summary().done == 7


# -- evaluate and checkpoints ----------------------------------------------------------------
def test_evaluate_with_swapped_arguments_is_refused(cli, runner, tmp_path, image) -> None:
    labels = (image > 100).astype("uint8") * 255
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "prob.tif", (image / 255.0).astype("float32"), photometric="minisblack")
    result = runner.invoke(cli, ["evaluate", str(tmp_path / "lab.tif"), str(tmp_path / "prob.tif")])
    assert result.exit_code == 2, result.output
    assert "integer-valued labels" in _flat(result.output) and "pred first, then gt" in _flat(result.output)
    assert runner.invoke(cli, ["evaluate", str(tmp_path / "prob.tif"), str(tmp_path / "lab.tif")]).exit_code == 0


def test_evaluate_warns_about_an_all_zero_ground_truth_and_takes_rounding_noise(cli, runner, tmp_path, image) -> None:
    prob = (image / 255.0).astype("float64")
    prob[0, 0, 0] = 1.0000000000000002  # another program's rounding
    tifffile.imwrite(tmp_path / "prob.tif", prob, photometric="minisblack")
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros(image.shape, "uint8"), photometric="minisblack")
    result = runner.invoke(cli, ["evaluate", str(tmp_path / "prob.tif"), str(tmp_path / "zero.tif")])
    assert result.exit_code == 0, result.output
    assert "warning" in _flat(result.output) and "all membrane" in _flat(result.output)
    # The other side: the EM image itself given as GT (no 0 anywhere) scored perfectly, unwarned.
    tifffile.imwrite(tmp_path / "em.tif", np.maximum(image, 1).astype("uint8"), photometric="minisblack")
    result = runner.invoke(cli, ["evaluate", str(tmp_path / "prob.tif"), str(tmp_path / "em.tif")])
    assert result.exit_code == 0 and "ground truth has no membrane" in _flat(result.output), result.output
    prob[0, 0, 0] = 1.01
    tifffile.imwrite(tmp_path / "prob.tif", prob, photometric="minisblack")
    result = runner.invoke(cli, ["evaluate", str(tmp_path / "prob.tif"), str(tmp_path / "zero.tif")])
    assert result.exit_code == 2 and "expected pred values in [0, 1]" in _flat(result.output)


def test_a_checkpoint_with_an_edited_normalisation_is_refused(cli, runner, tmp_path, image, checkpoint) -> None:
    from safetensors.torch import load_file, save_file

    from unetcore.checkpoint import read_header

    header = read_header(checkpoint)
    header["normalization"]["mean"] += 0.25
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(checkpoint)), str(edited), metadata={"emunet": json.dumps(header)})
    tifffile.imwrite(tmp_path / "x.tif", image[:1])
    result = runner.invoke(cli, ["predict", str(tmp_path / "x.tif"), str(tmp_path / "p.tif"), "--model", str(edited)])
    assert result.exit_code == 2 and "an edited header counts" in _flat(result.output), result.output
