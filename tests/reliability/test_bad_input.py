"""Bad input through the real CLI: every case is refused with a message that names the
problem and the fix, a non-zero exit code, no output created, and an existing output left
byte-for-byte untouched. Table-driven: each case builds its own input under `tmp_path`."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.bad_input import Ctx, flat, seg
from tests.reliability.conftest import CHUNKS, snapshot, write_zarr

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
    (c.out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"emunet": {"version": "0", "plan": {}}}}')
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
    message = flat(result.output)
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
