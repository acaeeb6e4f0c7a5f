"""Blocks: the mirror at the volume's edge, blocked prediction == whole-volume prediction
(property), chunk-disjoint writes, JSON jobs, failures recorded."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.blocks import BlockFailedError, BlockJob, block_ops, mirror_indices, open_input, predict_block, read_block, read_roi_mirrored, run_plan_locally
from pipeline.execute import run_group
from pipeline.geometry import Roi
from pipeline.ledger import Ledger
from pipeline.output import OutputOptions, create_output, open_output
from pipeline.plan import make_plan
from pipeline.volume import open_volume
from tests.pipeline.conftest import write_zarr


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(0, 25), st.integers(0, 25))
def test_mirror_indices_equal_numpy_symmetric_pad(size: int, lo: int, hi: int) -> None:
    axis = np.arange(size)
    padded = np.pad(axis, (lo, hi), mode="symmetric")
    np.testing.assert_array_equal(mirror_indices(-lo, size + hi, size), padded)


def test_read_roi_mirrored_reads_real_context_inside(tmp_path: Path) -> None:
    data = np.arange(4 * 30 * 30, dtype=np.uint16).reshape(4, 30, 30)
    write_zarr(tmp_path / "v.zarr", data, (2, 8, 8))
    v = open_volume(tmp_path / "v.zarr")
    roi = Roi((0, -7, 20), (4, 20, 25))  # leaves the volume at y < 0 and x ≥ 30
    expected = np.pad(data, [(0, 0), (7, 0), (0, 15)], mode="symmetric")[:, 0:20, 20:45]
    np.testing.assert_array_equal(read_roi_mirrored(v, roi), expected)
    inner = Roi((1, 5, 5), (2, 10, 10))
    np.testing.assert_array_equal(read_roi_mirrored(v, inner), data[inner.to_slices()])


@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(9, 60)), draw(st.integers(9, 60)))
    block = (draw(st.integers(1, 2)), 8 * draw(st.integers(1, 4)), 8 * draw(st.integers(1, 4)))
    seed = draw(st.integers(0, 2**16))
    return shape, block, seed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_blocked_prediction_equals_whole_volume_prediction(predictor, case) -> None:
    shape, block, seed = case
    volume = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        write_zarr(f"{tmp}/in.zarr", volume, (1, 16, 16))
        plan = make_plan(f"{tmp}/in.zarr", f"{tmp}/out.zarr", shape, predictor.model.config, block_shape=block)
        run = run_plan_locally(plan, predictor=predictor, options=OutputOptions(dtype="float32"))
        assert sorted(run.computed) == list(range(plan.num_blocks))
        blocked = open_output(f"{tmp}/out.zarr").read()
    whole = predictor.predict_stack(volume)
    np.testing.assert_allclose(blocked, whole, atol=1e-5, rtol=0)


def test_3d_model_blocks_equal_the_whole_volume(tmp_path: Path, single_thread_torch) -> None:
    import torch

    from unetcore.config import UNetConfig
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    torch.manual_seed(1)
    model = UNet(UNetConfig(spatial_dims=3, depth=1, base_channels=2, pool_factors=((1, 2, 2),))).eval()
    predictor = TilePredictor(model, Normalization(), PredictConfig(device="cpu"))
    volume = np.random.default_rng(3).integers(0, 256, (7, 21, 19), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (4, 8, 8))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, model.config, block_shape=(4, 8, 8))
    assert plan.context[0] != (0, 0)
    run_plan_locally(plan, predictor=predictor, options=OutputOptions(dtype="float32"))
    np.testing.assert_allclose(open_output(str(tmp_path / "out.zarr")).read(), predictor.predict(volume), atol=1e-5)


def test_blocks_write_disjoint_chunks(tmp_path: Path, predictor) -> None:
    volume = np.random.default_rng(0).integers(0, 256, (2, 40, 40), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (2, 40, 40))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, predictor.model.config, block_shape=(1, 16, 32), chunk_shape=(1, 16, 16))
    output = create_output(plan)
    ops = block_ops(plan, open_input(plan), output, None, lambda b, data: predict_block(data, plan, b, predictor))
    chunk_files = tmp_path / "out.zarr" / "probability" / "c"
    owners: dict[str, int] = {}
    for block_id in plan.block_ids():
        before = {p: p.stat().st_mtime_ns for p in chunk_files.rglob("*") if p.is_file()} if chunk_files.exists() else {}
        assert run_group([block_id], ops).done == [block_id]
        after = {p: p.stat().st_mtime_ns for p in chunk_files.rglob("*") if p.is_file()}
        touched = {str(p) for p in after if before.get(p) != after[p]}
        assert touched and not touched & set(owners), f"block {block_id} rewrote another block's chunk"
        owners.update(dict.fromkeys(touched, block_id))
    assert len(owners) == 2 * 3 * 3  # every chunk written by exactly one block


def test_block_job_is_json(tmp_path: Path) -> None:
    from unetcore.config import preset

    plan = make_plan("s3://b/in.zarr", "s3://b/out.zarr", (10, 100, 100), preset("tiny"), block_shape=(2, 32, 32))
    job = BlockJob(plan, 7)
    again = BlockJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and again.plan.block(7) == plan.block(7)
    with pytest.raises(IndexError):
        BlockJob(plan, plan.num_blocks)


def test_predict_block_checks_shapes(predictor, tmp_path: Path) -> None:
    plan = make_plan("in.zarr", "out.zarr", (2, 32, 32), predictor.model.config, block_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="read region"):
        predict_block(np.zeros((1, 16, 16), np.uint8), plan, 0, predictor)


def test_read_block_checks_the_volume(tmp_path: Path, predictor) -> None:
    write_zarr(tmp_path / "in.zarr", np.zeros((2, 20, 20), np.uint8), (2, 20, 20))
    plan = make_plan("x", "y", (2, 32, 32), predictor.model.config, block_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        read_block(plan, 0, open_volume(tmp_path / "in.zarr"))


class Exploding:
    model = None

    def predict_region(self, arrays, lo, hi):
        raise RuntimeError("CUDA out of memory (simulated)")


def test_a_failing_block_is_recorded_and_raised(tmp_path: Path, predictor) -> None:
    write_zarr(tmp_path / "in.zarr", np.zeros((2, 16, 32), np.uint8), (2, 16, 32))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), (2, 16, 32), predictor.model.config, block_shape=(1, 16, 16))
    run = run_plan_locally(plan, predictor=Exploding(), raise_on_error=False)
    assert run.computed == [] and set(run.failed) == set(range(4))
    summary = Ledger(plan.output_url, plan.num_blocks).summary()
    assert summary.done == 0 and summary.failed_ids == [0, 1, 2, 3]
    assert "CUDA out of memory" in summary.failed[0].error
    assert summary.failed[1].write_roi == {"offset": [0, 0, 16], "shape": [1, 16, 16]}
    with pytest.raises(BlockFailedError, match="4 failure.*CUDA out of memory.*resume=True"):
        run_plan_locally(plan, predictor=Exploding(), resume=True)
    run = run_plan_locally(plan, predictor=predictor, resume=True)
    assert sorted(run.computed) == [0, 1, 2, 3]
    assert Ledger(plan.output_url, plan.num_blocks).summary().failed == ()
