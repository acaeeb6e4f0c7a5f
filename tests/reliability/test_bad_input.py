"""Bad input through the real CLI: every case is refused with a message that names the
problem and the fix, a non-zero exit code, no output created, and an existing output left
byte-for-byte untouched. Table-driven: each case builds its own input under `tmp_path`."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save_tiny_checkpoint
from tests.reliability.conftest import CHUNKS, SHAPE, chunk_files, snapshot, write_zarr

VENV = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@dataclass
class Ctx:
    tmp: Path
    volume: Path
    checkpoint: Path
    image: np.ndarray
    scheduler: str | None = None  # the session's workers, for a case that reaches them (else `--workers 1`)

    @property
    def out(self) -> Path:
        return self.tmp / "out.zarr"


def seg(ctx: Ctx, inp: Path | str, *extra: str, model: Path | None = None) -> list[str]:
    where = ["--scheduler", ctx.scheduler] if ctx.scheduler else ["--workers", "1"]
    return ["segment", str(inp), str(ctx.out), "--model", str(model or ctx.checkpoint),
            "--block", "2", "24", "24", *where, "--no-flow", *extra]  # fmt: skip


# -- inputs ---------------------------------------------------------------------------------
def missing_path(c: Ctx) -> list[str]:
    return seg(c, c.tmp / "nope.zarr")


def not_zarr(c: Ctx) -> list[str]:
    (c.tmp / "plain").mkdir()
    (c.tmp / "plain" / "img.tif").write_bytes(b"II*\0")
    return seg(c, c.tmp / "plain")


def two_dims(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "2d.zarr", c.image[0]))


def four_dims(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "4d.zarr", c.image[None], (1, 1, 24, 24)))


def int64(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "i64.zarr", c.image.astype("int64")))


def complex64(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "c64.zarr", c.image.astype("complex64")))


def empty(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "empty.zarr", np.zeros((0, 48, 48), "uint8"), (1, 24, 24)))


def _non_finite(c: Ctx, bad: float) -> list[str]:
    data = c.image.astype("float32") / 255
    data[3, 40, 40] = bad  # in the last z block only
    data[0, 1, 2] = bad
    return seg(c, write_zarr(c.tmp / "f.zarr", data, CHUNKS))


def nan_input(c: Ctx) -> list[str]:
    return _non_finite(c, np.nan)


def inf_input(c: Ctx) -> list[str]:
    return _non_finite(c, -np.inf)


def block_off_lattice(c: Ctx) -> list[str]:
    args = seg(c, c.volume)
    args[args.index("--block") + 1 : args.index("--block") + 4] = ["2", "20", "20"]
    return args


# -- checkpoints ----------------------------------------------------------------------------
def _rewrite_header(src: Path, dst: Path, edit: Callable[[dict], None], rehash: bool = True) -> Path:
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["emunet"])
    edit(meta)
    if rehash:  # a consistent file (as if written that way), not an edited one
        from safetensors.torch import load_file

        from unetcore.checkpoint import content_hash

        meta["content_sha256"] = content_hash(load_file(str(src)), meta["model_config"], meta["normalization"])
    header["__metadata__"]["emunet"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return dst


def config_not_weights(c: Ctx) -> list[str]:
    """Weights of a base_channels=8 model under a header that says base_channels=4."""
    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    wide = save_checkpoint(c.tmp / "wide.safetensors", UNet(preset("tiny").replace(base_channels=8)), Normalization())

    def narrow(meta: dict) -> None:
        meta["model_config"]["base_channels"] = 4

    return seg(c, c.volume, model=_rewrite_header(wide, c.tmp / "mismatch.safetensors", narrow))


class _Marker:
    """Unpickling this creates a marker file: proof that nobody unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def pickle_checkpoint(c: Ctx) -> list[str]:
    path = c.tmp / "evil.safetensors"
    path.write_bytes(pickle.dumps({"model": _Marker(str(c.tmp / "UNPICKLED"))}))
    return seg(c, c.volume, model=path)


def torch_save_checkpoint(c: Ctx) -> list[str]:
    import torch

    path = c.tmp / "torch.safetensors"
    torch.save({"marker": _Marker(str(c.tmp / "UNPICKLED"))}, path)  # a zip of pickles
    return seg(c, c.volume, model=path)


def truncated_checkpoint(c: Ctx) -> list[str]:
    path = c.tmp / "cut.safetensors"
    path.write_bytes(c.checkpoint.read_bytes()[:1000])
    return seg(c, c.volume, model=path)


def missing_checkpoint(c: Ctx) -> list[str]:
    return seg(c, c.volume, model=c.tmp / "none.safetensors")


# -- outputs --------------------------------------------------------------------------------
def _existing_output(c: Ctx) -> None:
    c.out.mkdir()
    (c.out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"mine": 1}}')
    (c.out / "precious.txt").write_text("do not touch")


def output_exists(c: Ctx) -> list[str]:
    _existing_output(c)
    return seg(c, c.volume)


def our_output_exists(c: Ctx) -> list[str]:
    c.out.mkdir()
    (c.out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"emunet": {"version": "0"}}}')
    return seg(c, c.volume)


def edited_normalisation(c: Ctx) -> list[str]:
    def shift(meta: dict) -> None:
        meta["normalization"]["mean"] += 0.25

    return seg(c, c.volume, model=_rewrite_header(c.checkpoint, c.tmp / "edited.safetensors", shift, rehash=False))


def channel_axes(c: Ctx) -> list[str]:
    path = write_zarr(c.tmp / "cyx.zarr", c.image[:3])
    import zarr

    zarr.open_array(str(path), mode="r+").attrs["_ARRAY_DIMENSIONS"] = ["c", "y", "x"]
    return seg(c, path)


def float_0_255(c: Ctx) -> list[str]:
    return seg(c, write_zarr(c.tmp / "f255.zarr", c.image.astype("float32"), CHUNKS))


def resume_and_overwrite(c: Ctx) -> list[str]:
    _existing_output(c)
    return seg(c, c.volume, "--resume", "--overwrite")


def resume_other_plan(c: Ctx) -> list[str]:
    """--resume of an output made by another input: refused, naming the difference."""
    other = write_zarr(c.tmp / "other.zarr", c.image[:, :, ::-1].copy(), CHUNKS)
    from pipeline.output import OutputOptions, create_output
    from pipeline.plan import plan_for_volume
    from pipeline.volume import open_volume
    from unetcore.checkpoint import file_sha256, read_header
    from unetcore.config import UNetConfig

    config = UNetConfig.from_dict(read_header(c.checkpoint)["model_config"])
    plan = plan_for_volume(open_volume(str(other)), str(c.out), config, block_shape=(2, 24, 24),
                           checkpoint_sha256=file_sha256(c.checkpoint))  # fmt: skip
    create_output(plan, OutputOptions(), model_config=config.to_dict())
    return seg(c, c.volume, "--resume")


@dataclass
class Case:
    build: Callable[[Ctx], list[str]]
    says: tuple[str, ...]  # substrings of the message (lower case): the problem and the fix
    code: int = 2


CASES = {
    "missing path": Case(missing_path, ("no such path", "check the path")),
    "not zarr": Case(not_zarr, ("without zarr metadata", "emunet import")),
    "2 dims": Case(two_dims, ("expected a 3d", "2d shape (48, 48)", "re-import")),
    "4 dims": Case(four_dims, ("expected a 3d", "4d", "re-import")),
    "int64": Case(int64, ("uint8, uint16, float32", "got int64", "convert")),
    "complex64": Case(complex64, ("got complex64", "convert")),
    "empty array": Case(empty, ("positive integers", "(0, 48, 48)")),
    "nan in float input": Case(nan_input, ("expected finite grey values", "got 2 nan and 0 inf voxel(s) in 2 block(s)",
                                           "first at (z, y, x) = (0, 1, 2)", "(3, 40, 40)", "nan_to_num", "--no-check-finite")),
    "inf in float input": Case(inf_input, ("expected finite grey values", "got 0 nan and 2 inf", "--no-check-finite")),
    "block off the lattice": Case(block_off_lattice, ("phase lattice", "(2, 20, 20)", "nearest legal sizes along y: 16 or 24")),
    "config vs weights": Case(config_not_weights, ("mismatch", "expected (32,), got (64,)")),
    "pickle checkpoint": Case(pickle_checkpoint, ("pickle", "never unpickles", "re-save")),
    "torch.save checkpoint": Case(torch_save_checkpoint, ("pickle", "never unpickles", "re-save")),
    "truncated checkpoint": Case(truncated_checkpoint, ("truncated",)),
    "missing checkpoint": Case(missing_checkpoint, ("no file at", "none.safetensors")),
    "output exists": Case(output_exists, ("expected no output", "emunet did not write", "choose another output path")),
    "emunet output exists": Case(our_output_exists, ("existing emunet output", "--resume", "--overwrite")),
    "edited normalisation": Case(edited_normalisation, ("an edited header counts",)),
    "channel axes": Case(channel_axes, ("(c, y, x) image", "re-import")),
    "float input in 0..255": Case(float_0_255, ("expected grey values in [0, 1]", "--grey-range 0 255")),
    "resume and overwrite": Case(resume_and_overwrite, ("at most one of resume and overwrite",)),
    "resume another plan": Case(resume_other_plan, ("input_url",)),
}


# Found only once the flow runs (they need the workers: a scan of every block). Every other case is refused by the command itself, before a
# flow, its temporary Prefect server or a Dask cluster starts (`pipeline.prepare`).
FOUND_BY_THE_FLOW = {"nan in float input", "inf in float input"}


def _ctx(name: str, request, tmp_path: Path, volume: Path, checkpoint: Path, image: np.ndarray) -> Ctx:
    """The case's context: the cases found on the workers run on the session's shared ones
    (no local cluster started per case); the others keep `--workers 1`, never reached."""
    scheduler = request.getfixturevalue("local_scheduler") if name in FOUND_BY_THE_FLOW else None
    return Ctx(tmp_path, volume, checkpoint, image, scheduler)


def _flat(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused(name, cli, runner, request, tmp_path, volume, checkpoint, image) -> None:
    _refused(CASES[name], cli, runner, _ctx(name, request, tmp_path, volume, checkpoint, image))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_on_the_flow_path(name, prefect_api, cli, runner, request, tmp_path, volume, checkpoint, image,
                                               capfd) -> None:  # fmt: skip
    """The same table through `emunet segment`'s default path, the Prefect flow, whose run log
    goes to the process's real stderr: it names the error too, without a traceback."""
    capfd.readouterr()
    _refused(CASES[name], cli, runner, _ctx(name, request, tmp_path, volume, checkpoint, image), flow=True)
    log = capfd.readouterr().err
    if name in FOUND_BY_THE_FLOW:
        assert "Flow run" in log and "Finished in state Failed" in log, log[-3000:]
    else:  # refused by the command before any Prefect server or Dask cluster starts
        assert "Flow run" not in log and "temporary server" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def _refused(case: Case, cli, runner, ctx: Ctx, flow: bool = False) -> None:
    args = case.build(ctx)
    if flow:
        args[args.index("--no-flow")] = "--flow"
    before = snapshot(ctx.out)
    result = runner.invoke(cli, args)
    message = _flat(result.output)
    assert result.exit_code == case.code, result.output
    assert "traceback" not in message
    for text in case.says:
        assert text in message, f"{text!r} not in {result.output!r}"
    assert not (ctx.tmp / "UNPICKLED").exists()
    assert snapshot(ctx.out) == before  # nothing created, an existing output untouched


def test_pickle_marker_works_when_unpickled(tmp_path) -> None:
    """The marker of the pickle cases is real: unpickling does create the file."""
    pickle.loads(pickle.dumps(_Marker(str(tmp_path / "UNPICKLED"))))
    assert (tmp_path / "UNPICKLED").exists()


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
    assert "nearest legal sizes" in _flat(result.output)
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
    assert "expected pred and gt of the same shape, got pred (4, 48, 48) and gt (4, 40, 48)" in _flat(result.output)


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
    assert says in _flat(result.output)


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
        message = _flat(result.output)
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
