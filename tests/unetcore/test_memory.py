"""Memory of a tile: the estimate, the check and its suggestion, and a real allocation
failure (under ``RLIMIT_AS`` in a child process) turned into the same clear error."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unetcore import geometry, memory
from unetcore.config import preset
from unetcore.model import UNet

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


@pytest.mark.parametrize("name", ["paper", "cpu", "tiny", "aniso3d"])
def test_parameter_count_is_the_models(name) -> None:
    config = preset(name)
    assert memory._param_count(config) == sum(p.numel() for p in UNet(config).parameters())


def test_need_grows_with_tile_batch_and_threads() -> None:
    config = preset("paper")
    a = memory.inference_bytes(config, (572, 572))
    assert memory.inference_bytes(config, (572, 572), batch=2) > a
    assert memory.inference_bytes(config, (572, 572), threads=2) > a
    assert memory.inference_bytes(config, (732, 732)) > a
    assert memory.inference_bytes(config, (572, 572), bytes_per_element=2) < a
    assert memory.training_bytes(config, (572, 572)) > a
    # The paper net, one 572² tile: 0.3 GiB of activations counted; the check asks ~0.5 GiB.
    assert 0.4 * GIB < a < 0.7 * GIB


def test_a_tile_that_fits_passes_and_returns_its_need() -> None:
    config = preset("cpu")
    need = memory.check_tile(config, (572, 572), batch=4, budget=64 * GIB)
    assert need == memory.inference_bytes(config, (572, 572), batch=4)


def test_a_tile_that_does_not_fit_names_a_tile_and_a_batch_that_do() -> None:
    config = preset("paper")
    budget = GIB
    with pytest.raises(memory.TileMemoryError) as info:
        memory.check_tile(config, (572, 572), batch=4, budget=budget, where="worker w1 (cpu)")
    text = str(info.value)
    assert "tile (572, 572) at batch size 4" in text and "worker w1 (cpu) has 1.00 GiB free" in text
    size = (int(re.search(r"--tile (\d+) ", text).group(1)),) * 2  # one size: a square tile
    batch = int(re.search(r"--batch-size (\d+)", text).group(1))
    geometry.output_shape(config, size)  # legal
    assert memory.inference_bytes(config, size, batch=4) <= budget  # fits…
    bigger = geometry.nearest_legal(config, size[0] + 1, 0)[1]
    assert memory.inference_bytes(config, (bigger, bigger), batch=4) > budget  # …and is the largest
    assert memory.inference_bytes(config, (572, 572), batch=batch) <= budget
    assert memory.inference_bytes(config, (572, 572), batch=batch + 1) > budget


def test_the_suggested_tile_is_written_as_every_command_takes_it() -> None:
    """One convention: one size for a square (cube) tile, else one per axis with commas."""
    with pytest.raises(memory.TileMemoryError, match=r"--tile \d+ \(the largest"):
        memory.check_tile(preset("paper"), (572, 572), batch=1, budget=GIB // 4)
    assert memory._flag((76, 252, 252)) == "76,252,252" and memory._flag((252, 252)) == "252"


def test_when_nothing_fits_the_smallest_tile_is_named() -> None:
    with pytest.raises(memory.TileMemoryError, match=r"smallest legal tile \(188, 188\) needs about"):
        memory.check_tile(preset("paper"), (572, 572), batch=1, budget=1 << 20)


def test_training_tile_check() -> None:
    config = preset("paper")
    assert memory.check_training_tile(config, (572, 572), batch=1, budget=64 * GIB, where="x") > 0
    with pytest.raises(memory.TileMemoryError, match=r"training step .* use --tile (\d+)") as info:
        memory.check_training_tile(config, (572, 572), batch=1, budget=GIB, where="this machine (cpu)")
    size = int(re.search(r"--tile (\d+)", str(info.value)).group(1))
    assert memory.training_bytes(config, (size, size)) <= GIB < memory.training_bytes(config, (572, 572))


def test_only_allocation_failures_are_memory_errors() -> None:
    assert memory.is_oom(MemoryError())
    assert memory.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert memory.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not memory.is_oom(RuntimeError("Given groups=1, weight of size [64, 1, 3, 3], expected input"))


def test_cpu_budget_honours_a_limit() -> None:
    import psutil

    rss = psutil.Process().memory_info().rss
    assert memory.device_budget("cpu", limit_bytes=rss + GIB, used_bytes=rss) <= GIB
    assert memory.device_budget("cpu", limit_bytes=1, used_bytes=rss) == 0


CHILD = textwrap.dedent(
    """
    import re, resource, sys
    import numpy as np, psutil, torch
    from unetcore import geometry
    from unetcore.config import preset
    from unetcore.memory import TileMemoryError
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = preset("tiny").replace(base_channels=4)
    model = UNet(config)
    big = geometry.nearest_legal(config, 3000, 0)[1]
    image = np.zeros((2, 40, 40), np.uint8)
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + (768 << 20), resource.RLIM_INFINITY))
    def run(tile):
        cfg = PredictConfig(tile_shape=(tile, tile), batch_size=2, device="cpu")
        return TilePredictor(model, Normalization(), cfg).predict_stack(image)
    try:
        run(big)
    except TileMemoryError as exc:
        print("ERROR", exc)
        size = int(re.search(r"--tile (\\d+)", str(exc)).group(1))
        print("SUGGESTED", size, run(size).shape)
    """
)


def test_a_real_allocation_failure_becomes_a_clear_error_whose_suggestion_runs() -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert "tile (3004, 3004) at batch size 1, which ran out of cpu memory" in error  # a CPU pass holds one tile that large
    assert "can't allocate memory" in error  # the allocator's own words are kept
    assert re.search(r"SUGGESTED (\d+) \(2, 40, 40\)", proc.stdout), proc.stdout
    size = int(re.search(r"SUGGESTED (\d+)", proc.stdout).group(1))
    assert 116 <= size < 3004


def test_other_forward_errors_pass_through_unchanged() -> None:
    import numpy as np

    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    model = UNet(preset("tiny").replace(base_channels=4))
    predictor = TilePredictor(model, Normalization(), PredictConfig(device="cpu"))
    with pytest.raises(RuntimeError) as info:
        predictor._forward(np.zeros((1, 116, 116), np.float64), 1)  # float64 into float32 weights
    assert not isinstance(info.value, memory.TileMemoryError)


@pytest.mark.parametrize("name", ["paper", "cpu", "tiny", "aniso3d"])
def test_the_parameter_count_from_the_config_is_the_models(name) -> None:
    """`_param_count` counts from the config (no model built: the meta device's first use cost
    a client 1.1 s); it must equal the built model's, for odd variants too."""
    from unetcore.memory import _param_count

    base = preset(name)
    variants = [base, base.replace(upsampling="transposed"), base.replace(base_channels=3),
                base.replace(in_channels=2, num_classes=3)]
    if base.pool_factors is None:  # explicit pool factors fix the depth
        variants.append(base.replace(depth=2))
    for config in variants:
        assert _param_count(config) == sum(p.numel() for p in UNet(config).parameters()), config
