"""Bad input beyond the table of `test_bad_input.py`, through the real CLI and API: inputs that
are legal by design (a volume smaller than a tile), faults that only the blocks meet (NaN
without the scan, a corrupt chunk), tiles and blocks off the model's lattice, `emunet
evaluate`'s contract, a read-only output location, and the flow's parameters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save_tiny_checkpoint
from tests.reliability.bad_input import VENV, Ctx, flat, seg
from tests.reliability.conftest import CHUNKS, SHAPE, chunk_files, write_zarr


def test_a_volume_smaller_than_a_tile_is_legal(cli, runner, tmp_path, image, local_scheduler) -> None:
    """A 1×5×5 volume is far below the tiny model's smallest tile: the edge mirror pads it, so
    it is legal by design and gives one block of finite probabilities of the volume's shape."""
    import zarr

    inp = write_zarr(tmp_path / "small.zarr", image[:1, :5, :5], (1, 5, 5))
    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors", seed=0)
    result = runner.invoke(cli, ["segment", str(inp), str(tmp_path / "o.zarr"), "--model", str(ckpt), "--scheduler", local_scheduler,
                                 "--no-flow", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    prob = zarr.open_array(str(tmp_path / "o.zarr" / "probability"))[...]
    assert prob.shape == (1, 5, 5) and prob.dtype == np.uint8 and len(np.unique(prob)) > 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_without_the_scan_fails_every_affected_block_clearly(bad, cli, runner, tmp_path, image, checkpoint,
                                                                        local_scheduler) -> None:  # fmt: skip
    """With --no-check-finite (a terabyte float volume not scanned up front) non-finite grey
    values are found where a block is read: exit 1, each affected block reported with its
    coordinates and the cause; the blocks whose read region is finite are written."""
    from pipeline.ledger import Ledger

    data = image.astype("float32") / 255
    data[3, 40, 40] = bad  # in the last z block only
    inp = write_zarr(tmp_path / "f.zarr", data, CHUNKS)
    ctx = Ctx(tmp_path, inp, checkpoint, image, local_scheduler)
    result = runner.invoke(cli, seg(ctx, inp, "--no-check-finite"))
    assert result.exit_code == 1, result.output
    assert "4 failed" in result.output and "--resume" in result.output
    summary = Ledger(str(ctx.out), 8).summary()
    assert summary.done == 4 and summary.failed_ids == [4, 5, 6, 7]  # z blocks 0..3 are finite
    for f in summary.failed:
        assert "expected finite grey values, got NaN or inf" in f.error
        assert f.write_roi["offset"][0] == 2
    status = runner.invoke(cli, ["status", str(ctx.out)])
    assert "4 / 8" in status.output or "4/8" in status.output.replace(" ", ""), status.output
    assert "NaN or inf" in status.output


def test_illegal_tile_is_refused_before_any_output(cli, runner, tmp_path, volume, checkpoint, image) -> None:
    """The tile is checked against the model and the block before the output is created."""
    ctx = Ctx(tmp_path, volume, checkpoint, image)
    result = runner.invoke(cli, seg(ctx, volume, "--tile", "50"))
    assert result.exit_code == 2, result.output
    assert "nearest legal sizes" in flat(result.output)
    assert not ctx.out.exists()


def test_block_not_aligned_to_output_chunks() -> None:
    """The CLI's output chunks follow the block; through the API a block that cuts chunks is
    refused (two blocks writing one chunk would lose data)."""
    from pipeline.plan import BlockAlignmentError, make_plan
    from unetcore.config import preset

    with pytest.raises(BlockAlignmentError, match=r"multiple of.*\(1, 16, 16\)") as err:
        make_plan("in.zarr", "out.zarr", (4, 48, 48), preset("tiny"), block_shape=(2, 24, 24), chunk_shape=(1, 16, 16))
    assert "expected" in str(err.value)


def test_corrupt_input_chunk_fails_its_blocks_clearly(cli, runner, tmp_path, volume, checkpoint, image, local_scheduler) -> None:
    from pipeline.ledger import Ledger

    chunk_files(volume)[0].write_bytes(b"\x00garbage" * 8)  # chunk (0, 0, 0)
    ctx = Ctx(tmp_path, volume, checkpoint, image, local_scheduler)
    result = runner.invoke(cli, seg(ctx, volume))
    assert result.exit_code == 1, result.output
    assert "--resume" in result.output
    summary = Ledger(str(ctx.out), 8).summary()
    assert 0 in summary.failed_ids and summary.done + len(summary.failed) == 8
    assert all("decompression error" in f.error.lower() for f in summary.failed)


# -- evaluate -------------------------------------------------------------------------------
def test_evaluate_ground_truth_of_another_shape(cli, runner, tmp_path, image) -> None:
    pred = write_zarr(tmp_path / "p.zarr", (image > 128).astype("uint8") * 255, CHUNKS)
    gt = write_zarr(tmp_path / "gt.zarr", np.ones((4, 40, 48), "uint8"), (1, 20, 24))
    result = runner.invoke(cli, ["evaluate", str(pred), str(gt)])
    assert result.exit_code == 2
    assert "expected pred and gt of the same shape, got pred (4, 48, 48) and gt (4, 40, 48)" in flat(result.output)


@pytest.mark.parametrize(
    "pred, gt, says",
    [
        (np.full(SHAPE, 1.5, "float32"), np.ones(SHAPE, "uint8"), "values in [0, 1]"),
        (np.full(SHAPE, np.nan, "float32"), np.ones(SHAPE, "uint8"), "without nan"),
        (np.ones(SHAPE, "float32"), -np.ones(SHAPE, "int16"), "labels >= 0"),
    ],
    ids=["pred-above-1", "pred-nan", "gt-negative"],
)
def test_evaluate_refuses_values_outside_the_contract(pred, gt, says, cli, runner, tmp_path) -> None:
    """Binary labels are nowhere required (GT: 0 = membrane, > 0 = cell, instance ids fine;
    `weights --binary` takes label > 0): what is refused is a proposal outside [0, 1] or NaN,
    and negative labels."""
    p = write_zarr(tmp_path / "p.zarr", pred, CHUNKS)
    g = write_zarr(tmp_path / "g.zarr", gt, CHUNKS)
    result = runner.invoke(cli, ["evaluate", str(p), str(g)])
    assert result.exit_code == 2, result.output
    assert says in flat(result.output)


# -- read-only output location --------------------------------------------------------------
def _immutable(path: Path, on: bool) -> bool:
    try:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def test_read_only_output_location(cli, runner, tmp_path, volume, checkpoint, image) -> None:
    """chmod 0o555 stops nobody when the tests run as root; then the directory is made
    immutable (chattr +i), which binds root too."""
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:
        if not _immutable(parent, True):
            pytest.skip("running as root and chattr +i is unavailable: no read-only mechanism left")
    try:
        probe = parent / "probe"
        with pytest.raises(PermissionError):
            probe.mkdir()  # the mechanism really is read-only
        ctx = Ctx(tmp_path, volume, checkpoint, image)
        args = seg(ctx, volume)
        args[2] = str(parent / "out.zarr")
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        message = flat(result.output)
        assert "permission" in message or "not permitted" in message
        assert str(parent / "out.zarr") in result.output.replace("\n", "")
        assert list(parent.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            _immutable(parent, False)
        parent.chmod(0o755)


# -- the real command line and the flow -----------------------------------------------------
def test_segment_is_a_command_of_the_real_cli(tmp_path) -> None:
    """The installed `emunet` has `segment` (it was missing from COMMAND_MODULES until 27 Nov)."""
    done = subprocess.run([str(VENV / "emunet"), "segment", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_invalid_flow_parameters_are_refused_before_the_run() -> None:
    """Prefect validates the flow's parameters against `SegmentVolumeParams` (pydantic, extra
    fields forbidden) before any task runs; each error names the field."""
    from flows.segment_volume import SegmentVolumeParams, segment_volume

    bad = {"input_url": "in.zarr", "output_url": "out.zarr", "checkpoint": "m.safetensors",
           "batch_size": 0, "dtype": "int64", "resume": True, "overwrite": True, "colour": "red"}  # fmt: skip
    with pytest.raises(Exception) as err:
        segment_volume.validate_parameters({"params": bad})
    text = str(err.value)
    for field in ("batch_size", "dtype", "colour"):
        assert field in text, text
    assert "greater than or equal to 1" in text and "Extra inputs are not permitted" in text
    with pytest.raises(ValueError, match="at most one of resume and overwrite"):
        SegmentVolumeParams(**{k: v for k, v in bad.items() if k not in ("batch_size", "dtype", "colour")})
    with pytest.raises(ValueError, match="input_url"):
        SegmentVolumeParams(output_url="o", checkpoint="c")
