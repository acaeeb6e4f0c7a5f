"""A tile that exhausts memory: refused before anything is written, with a tile that fits.

* `emunet segment` against a real worker process with a 1.5 GiB Dask memory limit;
* `emunet predict` and the trainer in a child process under ``RLIMIT_AS``;
* the default tile shrinks to one that fits instead of failing (`fit_tile`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import snapshot, write_zarr

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_worker() -> str:
    """One real worker process with a 1.5 GiB memory limit and one GPU slot."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, memory_limit="1.5GiB",
        resources={"GPU": 1}, dashboard_address=None,
    ) as cluster:  # fmt: skip
        yield cluster.scheduler_address


def test_segment_refuses_a_tile_the_workers_cannot_hold_and_its_suggestion_runs(
    cli, runner, checkpoint, image, small_worker, tmp_path
) -> None:
    source = write_zarr(tmp_path / "in.zarr", image[:1], (1, 48, 48))
    out = tmp_path / "out.zarr"

    def segment(*extra: str):
        args = ["segment", str(source), str(out), "--model", str(checkpoint), "--scheduler", small_worker,
                "--block", "1", "48", "48", "--no-flow", "--json", *extra]  # fmt: skip
        return runner.invoke(cli, args)

    refused = segment("--tile", "3004,3004")
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "Expected a tile that fits in memory" in text and "tile (3004, 3004) at batch size 1" in text
    assert re.search(r"worker tcp://127\.0\.0\.1:\d+ \(cpu\) has [\d.]+ GiB free", text), text
    assert "Traceback" not in refused.output
    assert not out.exists()

    size = re.search(r"--tile ([\d,]+) \(", text).group(1)
    assert 116 <= int(size.split(",")[0]) < 3004
    ran = segment("--tile", size)
    assert ran.exit_code == 0, ran.output
    before = snapshot(out)

    again = segment("--tile", "3004", "--overwrite")  # refused before the old output is touched
    assert again.exit_code == 2, again.output
    assert snapshot(out) == before


CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, psutil, torch

    torch.set_num_threads(1)
    from emunet.cli.app import main

    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + (1 << 30), resource.RLIM_INFINITY))
    if sys.argv[1] == "trainer":
        from unetcore.config import preset
        from unetcore.model import UNet
        from unetcore.synthetic import synthetic_em_2d
        from unetcore.trainer import TrainConfig, TrainData, Trainer

        em = synthetic_em_2d((64, 64), seed=0)
        data = TrainData([em.image], [em.labels], [np.ones((64, 64), np.float32)])
        try:
            Trainer(UNet(preset("cpu")), data, TrainConfig(tile=2012, device="cpu"), sys.argv[2], progress=False)
        except ValueError as exc:
            print(type(exc).__name__, exc)
        sys.exit(0)
    sys.argv = ["emunet", *sys.argv[1:]]
    main()
    """
)


def child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_predict_refuses_a_tile_beyond_the_process_limit_and_its_suggestion_runs(checkpoint, image, tmp_path) -> None:
    from unetcore.io import write_tiff

    source = write_tiff(tmp_path / "in.tif", image[:2])
    out = tmp_path / "prob.tif"
    refused = child("predict", str(source), str(out), "--model", str(checkpoint), "--tile", "4092", "--device", "cpu")
    assert refused.returncode == 2, refused.stderr[-2000:]
    text = " ".join(refused.stderr.split())
    assert "Expected a tile that fits in memory" in text and "this machine (cpu)" in text, text
    assert "Traceback" not in refused.stderr
    assert not out.exists()
    size = re.search(r"--tile (\d+) \(", text).group(1)
    ran = child("predict", str(source), str(out), "--model", str(checkpoint), "--tile", size, "--device", "cpu")
    assert ran.returncode == 0, ran.stderr[-2000:]
    from unetcore.io import read_array

    assert read_array(str(out)).shape == (2, 48, 48)


def test_trainer_refuses_a_training_tile_beyond_the_process_limit(tmp_path) -> None:
    proc = child("trainer", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("TileMemoryError Expected a training tile that fits in memory"), proc.stdout
    assert re.search(r"use --tile \d+ \(the largest", proc.stdout)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_default_tile_shrinks_to_fit_and_a_chosen_one_is_refused() -> None:
    from pipeline.memory import fit_tile
    from unetcore import memory
    from unetcore.config import preset

    config = preset("paper")
    budgets = {"tcp://a": {"device": "cpu", "budget": 64 << 30}, "tcp://b": {"device": "cpu", "budget": 1 << 30}}
    assert fit_tile(config, (572, 572), {"tcp://a": budgets["tcp://a"]}, batch=4, chosen=True) == (572, 572)
    shrunk = fit_tile(config, (572, 572), budgets, batch=4, chosen=False)  # the tightest worker decides
    assert shrunk < (572, 572) and memory.inference_bytes(config, shrunk, batch=4) <= 1 << 30
    with pytest.raises(memory.TileMemoryError, match=r"worker tcp://b \(cpu\) has 1\.00 GiB free"):
        fit_tile(config, (572, 572), budgets, batch=4, chosen=True)
    cuda = {"tcp://g": {"device": "cuda:0", "budget": 1 << 30}}  # bf16 activations: half the bytes
    assert fit_tile(config, (572, 572), cuda, batch=4, chosen=False) > shrunk
    with pytest.raises(memory.TileMemoryError, match="smallest"):
        fit_tile(config, (572, 572), {"tcp://c": {"device": "cpu", "budget": 1 << 20}}, batch=1, chosen=False)
    assert np.all(np.array(shrunk) >= 188)
