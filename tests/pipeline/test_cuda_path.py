"""The block path on a CUDA device (skipped without one): bf16 blocks agree with the CPU's
float32 whole-volume result, at block seams as inside, for each input dtype the device
path stages raw (uint8, uint16, float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.blocks import run_plan_locally
from pipeline.output import OutputOptions, open_output
from pipeline.plan import make_plan
from tests.pipeline.conftest import write_zarr
from unetcore.normalization import Normalization
from unetcore.predict import PredictConfig, TilePredictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BF16_TOLERANCE = 0.03  # probabilities: bf16 keeps 8 bits of mantissa through the network


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_gpu_blocks_agree_with_the_cpu_whole_volume(tmp_path: Path, tiny_model, dtype: str) -> None:
    rng = np.random.default_rng(7)
    top = {"uint8": 255, "uint16": 65535, "float32": 1}[dtype]
    volume = (rng.random((3, 150, 170)) * top).astype(dtype)
    norm = Normalization(mean=0.5, std=0.25)
    whole = TilePredictor(tiny_model, norm, PredictConfig(device="cpu", max_out_tile=4096)).predict_stack(volume)
    write_zarr(tmp_path / "in.zarr", volume, (1, 32, 32))
    block = (1, 64, 64)
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, tiny_model.config,
                     block_shape=block)
    gpu = TilePredictor(tiny_model, norm, PredictConfig(device="cuda", amp=True, batch_size=3))
    run = run_plan_locally(plan, predictor=gpu, options=OutputOptions(dtype="float32"))
    assert sorted(run.computed) == list(range(plan.num_blocks))
    blocked = open_output(str(tmp_path / "out.zarr")).read()
    diff = np.abs(blocked - whole)
    seams = np.zeros(volume.shape, bool)
    for axis in (1, 2):
        index = [slice(None)] * 3
        for edge in range(block[axis], volume.shape[axis], block[axis]):
            index[axis] = slice(edge - 1, edge + 1)  # the last row of a block and the first of the next
            seams[tuple(index)] = True
    assert diff.max() <= BF16_TOLERANCE, f"max |gpu - cpu| = {diff.max():.4f}"
    assert diff[seams].max() <= BF16_TOLERANCE, f"at block seams: {diff[seams].max():.4f}"
    assert diff.mean() <= BF16_TOLERANCE / 10


def test_a_uint8_output_is_quantised_on_the_gpu_as_the_host_would(tmp_path: Path, tiny_model) -> None:
    """Default output (uint8, no mask): the block comes back as bytes quantised on the device;
    they match quantising the same device's float32 result on the host (two GPU passes may
    differ in the last bits, which can move a value across a rounding edge: by 1 at most)."""
    from pipeline.output import to_output_dtype

    volume = (np.random.default_rng(3).random((2, 130, 150)) * 255).astype(np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (1, 32, 32))
    gpu = TilePredictor(tiny_model, Normalization(), PredictConfig(device="cuda", amp=True, batch_size=3))
    stored = {}
    for dtype in ("uint8", "float32"):
        plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / f"{dtype}.zarr"), volume.shape, tiny_model.config,
                         block_shape=(1, 64, 64))
        output_options = OutputOptions(dtype=dtype)
        run_plan_locally(plan, predictor=gpu, options=output_options)
        stored[dtype] = np.asarray(open_output(str(tmp_path / f"{dtype}.zarr")).array("probability")[...])
    diff = np.abs(stored["uint8"].astype(int) - to_output_dtype(stored["float32"], "uint8").astype(int))
    assert stored["uint8"].dtype == np.uint8 and diff.max() <= 1 and (diff == 0).mean() >= 0.99


def test_a_stack_in_groups_on_the_last_cuda_device_equals_one_pass(tiny_model, monkeypatch) -> None:
    """`predict_stack` on the last CUDA device (with several GPUs, cuda:N: the pinned staging
    buffer must wait for copies on that device's stream, not the current device's), once in
    one pass and once one image per pass (no memory to spare): the same probabilities."""
    from unetcore import memory

    stack = (np.random.default_rng(4).random((6, 130, 150)) * 255).astype(np.uint8)
    gpu = TilePredictor(tiny_model, Normalization(), PredictConfig(device=f"cuda:{torch.cuda.device_count() - 1}",
                                                                   batch_size=3))  # fmt: skip
    one_pass = gpu.predict_stack(stack)
    monkeypatch.setattr(memory, "device_budget", lambda *args, **kwargs: 0)
    assert gpu.images_per_region(stack[0]) == 1
    np.testing.assert_allclose(gpu.predict_stack(stack), one_pass, atol=BF16_TOLERANCE / 10, rtol=0)
