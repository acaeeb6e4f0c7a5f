"""The prepared GPU runs (`bench/gpu_isbi.py`, `bench/gpu_pipeline.py`) run once, on a lent
GPU with minutes to spare: a crash in their last step would lose the whole run. Their
``--smoke`` modes take every step on a tiny model on the CPU; here they must finish and
write their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _run(args: list[str], out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    out.mkdir()
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.realdata
def test_the_isbi_training_run_finishes_and_writes_its_results(shared_data: Path, tmp_path: Path) -> None:
    done = _run([str(ROOT / "bench" / "gpu_isbi.py"), "--smoke", "--seconds", "3", "--data", str(shared_data / "isbi2012"),
                 "--run-dir", str(tmp_path / "run")], tmp_path / "out", tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_isbi.json").read_text())
    assert result["train"]["steps"] > 0 and result["train"]["ema_decay"] == 0.999
    for scores in (result["validation"], result["validation_tta"]):
        assert 0 <= scores["rand_error"] <= 1 and 0 <= scores["pixel_error"] <= 1
    assert [row["batch"] for row in result["throughput"]] == [1, 4]
    assert (tmp_path / "out" / "gpu_isbi_best.safetensors").is_file() and (tmp_path / "out" / "gpu_isbi_val.png").is_file()
    assert not (tmp_path / "runs").exists()  # the run went where --run-dir said


def test_the_pipeline_run_finishes_with_every_comparison(tmp_path: Path) -> None:
    done = _run([str(ROOT / "bench" / "gpu_pipeline.py"), "--smoke", "--workdir", str(tmp_path / "work")],
                tmp_path / "out", tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_pipeline.json").read_text())
    assert result["ok"] and result["failed"] == []
    assert result["dask_map_overlap_seconds"] > 0 and result["speedup_vs_dask"] > 0  # the baseline ran on the cluster
    assert all(v["ok"] for v in result["variants"].values()) and len(result["geometry"]["edges"]) >= 2
