"""Test-time augmentation on the volume path: the mean over the 8 flips/rotations of the
(y, x) plane, blocked = whole, the flag from the command line to the blocks, and resume.

The reference (`mean_of_views`) transforms the input with numpy and predicts each view
with a plain predictor, independently of `unetcore.tta`. Sizes are not multiples of the
model's lattice, so the flipped views of a block start off the lattice (the case that
needs `unetcore.tta`'s phase handling).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.blocks import predict_block, run_plan_locally
from pipeline.cluster import ClusterConfig, local_cluster
from pipeline.output import OutputOptions, PlanMismatchError, open_output
from pipeline.plan import make_plan, model_context
from pipeline.segment import SegmentConfig, segment
from tests.pipeline.conftest import write_zarr

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo-synthetic.safetensors"
SHAPE = (2, 52, 45)  # y, x off the demo model's lattice (8)
BLOCK = (1, 24, 16)  # a 2 × 3 × 3 grid with cut blocks at the high edges


def mean_of_views(plain, volume: np.ndarray) -> np.ndarray:
    """mean over k, flip of undo(P(rot90(flip(volume), k))) in the (y, x) plane."""
    total = np.zeros(volume.shape, np.float64)
    for k in range(4):
        for flip in (False, True):
            view = np.rot90(volume[..., ::-1] if flip else volume, k, axes=(-2, -1))
            back = np.rot90(plain(np.ascontiguousarray(view)), -k, axes=(-2, -1))
            total += back[..., ::-1] if flip else back
    return (total / 8).astype(np.float32)


@pytest.fixture(scope="module")
def demo():
    from unetcore.checkpoint import load_checkpoint

    return load_checkpoint(DEMO_MODEL)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, np.ndarray]:
    from unetcore.synthetic import synthetic_em_volume

    image = synthetic_em_volume(SHAPE, seed=5).image
    path = tmp_path_factory.mktemp("vol") / "in.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(1, 24, 16), dtype="uint8")[:] = image
    return path, image


@pytest.fixture(scope="module")
def expected(demo, volume) -> np.ndarray:
    """The independent reference on the whole volume (one thread: the machine is shared)."""
    import torch

    from unetcore.predict import PredictConfig, TilePredictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = TilePredictor(demo.model, demo.normalization, PredictConfig(device="cpu", batch_size=8))
        return mean_of_views(plain.predict_stack, volume[1])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scheduler() -> str:
    cluster, _, _ = local_cluster(ClusterConfig(workers=1, torch_threads=1))
    with cluster:
        yield cluster.scheduler_address


def stored(out: Path) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")["probability"][:]


def test_segment_with_tta_is_the_mean_of_the_8_views(volume, scheduler, expected, demo, tmp_path) -> None:
    from unetcore.predict import PredictConfig, TilePredictor

    out = tmp_path / "out.zarr"
    config = SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False, torch_threads=1, dtype="float32", tta=True)
    result = segment(volume[0], out, DEMO_MODEL, config)
    assert result.ok and result.computed == 18
    np.testing.assert_allclose(stored(out), expected, atol=1e-5, rtol=0)
    plain = TilePredictor(demo.model, demo.normalization, PredictConfig(device="cpu")).predict_stack(volume[1])
    assert np.abs(plain - expected).max() > 1e-2, "TTA must change the numbers here, or the test proves nothing"
    meta = zarr.open_group(str(out), mode="r").attrs["emunet"]
    assert meta["predict"]["tta"] is True
    assert meta["plan"]["context"] == [list(c) for c in model_context(demo.config, tta=True)]


def test_resume_with_another_tta_is_refused_before_any_block(volume, scheduler, tmp_path) -> None:
    out = tmp_path / "out.zarr"
    config = SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False, torch_threads=1)
    assert segment(volume[0], out, DEMO_MODEL, config).ok
    before = stored(out)
    with pytest.raises(PlanMismatchError, match=r"tta: stored False, now True"):
        segment(volume[0], out, DEMO_MODEL, dataclasses.replace(config, resume=True, tta=True))
    np.testing.assert_array_equal(stored(out), before)


def test_the_cli_flag_reaches_the_blocks(app, runner, volume, scheduler, expected, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")
    out = tmp_path / "out.zarr"
    cmd = ["segment", str(volume[0]), str(out), "--model", str(DEMO_MODEL), "--block", *map(str, BLOCK),
           "--scheduler", scheduler, "--dtype", "float32", "--tta", "--no-flow", "--json"]  # fmt: skip
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["computed"] == 18
    np.testing.assert_allclose(stored(out), expected, atol=1e-5, rtol=0)
    assert zarr.open_group(str(out), mode="r").attrs["emunet"]["predict"]["tta"] is True


def test_tta_from_the_environment_and_the_flow_parameters(monkeypatch) -> None:
    from flows.segment_volume import SegmentVolumeParams

    assert SegmentConfig.from_env({"EMUNET_SEGMENT_TTA": "true"}).tta is True
    assert SegmentConfig.from_env({}).tta is False
    params = SegmentVolumeParams.from_segment_config("in.zarr", "out.zarr", "m", SegmentConfig(tta=True))
    assert params.tta is True and params.segment_config().tta is True
    monkeypatch.setenv("EMUNET_SEGMENT_TTA", "1")
    assert SegmentVolumeParams(input_url="in.zarr", output_url="out.zarr", checkpoint="m").segment_config().tta is True


# -- in process: blocked = whole, 3D models, the plan's context -------------------------------------
@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(9, 50)), draw(st.integers(9, 50)))
    block = (1, 8 * draw(st.integers(1, 4)), 8 * draw(st.integers(1, 4)))
    return shape, block, draw(st.integers(0, 2**16))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_blocked_equals_whole_with_tta(predictor, case) -> None:

    from unetcore.predict import TilePredictor

    shape, block, seed = case
    tta = TilePredictor(predictor.model, predictor.normalization, dataclasses.replace(predictor.config, tta=True))
    volume = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        write_zarr(f"{tmp}/in.zarr", volume, (1, 16, 16))
        plan = make_plan(f"{tmp}/in.zarr", f"{tmp}/out.zarr", shape, predictor.model.config, block_shape=block, tta=True)
        run_plan_locally(plan, predictor=tta, options=OutputOptions(dtype="float32"))
        blocked = open_output(f"{tmp}/out.zarr").read()
    np.testing.assert_allclose(blocked, tta.predict_stack(volume), atol=1e-5, rtol=0)
    np.testing.assert_allclose(blocked, mean_of_views(predictor.predict_stack, volume), atol=1e-5, rtol=0)


def test_3d_model_views_are_the_plane_s_and_blocks_equal_the_whole(tmp_path: Path, single_thread_torch) -> None:
    """A 3D model: the same 8 views of the (y, x) plane, z never flipped."""
    import torch

    from unetcore.config import UNetConfig
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    torch.manual_seed(1)
    model = UNet(UNetConfig(spatial_dims=3, depth=1, base_channels=2, pool_factors=((1, 2, 2),))).eval()
    plain = TilePredictor(model, Normalization(), PredictConfig(device="cpu"))
    tta = TilePredictor(model, Normalization(), PredictConfig(device="cpu", tta=True))
    volume = np.random.default_rng(3).integers(0, 256, (7, 21, 19), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (4, 8, 8))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, model.config, block_shape=(4, 8, 8), tta=True)
    run_plan_locally(plan, predictor=tta, options=OutputOptions(dtype="float32"))
    expected = mean_of_views(plain.predict, volume)
    np.testing.assert_allclose(tta.predict(volume), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(open_output(str(tmp_path / "out.zarr")).read(), expected, atol=1e-5, rtol=0)


def test_a_plan_without_the_tta_context_is_refused(predictor, tmp_path: Path) -> None:

    from unetcore.predict import TilePredictor

    tta = TilePredictor(predictor.model, predictor.normalization, dataclasses.replace(predictor.config, tta=True))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), (1, 40, 40), predictor.model.config, block_shape=(1, 16, 16))
    data = np.zeros(plan.block(0).read_roi.shape, np.uint8)
    with pytest.raises(ValueError, match="expected a plan made for test-time augmentation.*tta=True"):
        predict_block(data, plan, 0, tta)
    lo, hi = model_context(predictor.model.config)[1], model_context(predictor.model.config, tta=True)[1]
    assert hi[0] >= lo[0] and hi[1] >= lo[1] and hi[0] == hi[1]


def test_resume_in_process_names_the_tta_mismatch(predictor, tmp_path: Path) -> None:

    from unetcore.predict import TilePredictor

    volume = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (1, 16, 16))
    args = (str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, predictor.model.config)
    tta = TilePredictor(predictor.model, predictor.normalization, dataclasses.replace(predictor.config, tta=True))
    run_plan_locally(make_plan(*args, block_shape=(1, 16, 16), tta=True), predictor=tta, block_ids=[0])
    assert open_output(args[1]).attrs["emunet"]["predict"]["tta"] is True
    with pytest.raises(PlanMismatchError, match=r"tta: stored True, now False"):
        run_plan_locally(make_plan(*args, block_shape=(1, 16, 16)), predictor=predictor, resume=True)
    assert sorted(run_plan_locally(make_plan(*args, block_shape=(1, 16, 16), tta=True), predictor=tta, resume=True).computed) == [1, 2, 3]
