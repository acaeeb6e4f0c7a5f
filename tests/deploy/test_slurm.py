"""deploy/slurm: the rendered SLURM job script and the adaptive settings.

dask-jobqueue renders ``job_script()`` without SLURM: the cluster starts a scheduler here
(127.0.0.1, no dashboard) and submits nothing as long as no job is asked for (jobs=0, an
adaptive minimum of 0). Every cluster is closed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import dask
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, load_deploy, profiler_on

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

slurm = load_deploy("slurm/cluster.py")
SlurmConfig = slurm.SlurmConfig
LOCAL = {"scheduler_host": "127.0.0.1", "dashboard_address": None}


def header(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]


def worker_line(script: str) -> str:
    (line,) = [line for line in script.splitlines() if " -m " in line]
    return line


def test_one_gpu_per_job_script() -> None:
    config = SlurmConfig(
        partition="gpu", account="emlab", cores=8, memory="64GiB", walltime="02:00:00",
        job_extra_directives=("--constraint=a100",), **LOCAL,
    )
    with slurm.make_cluster(config) as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    lines = header(script)
    for directive in ("--gres=gpu:1", "-p gpu", "-A emlab", "--cpus-per-task=8", "--mem=64G", "-t 02:00:00",
                      "--constraint=a100"):
        assert directive in lines
    worker = worker_line(script)
    assert "-m distributed.cli.dask_worker" in worker
    assert "--resources GPU=1" in worker
    assert "--nthreads 1" in worker and "--memory-limit 64.00GiB" in worker
    assert "--nworkers" not in worker  # one worker per job: it owns the job's only GPU
    assert "--local-directory ${TMPDIR:-/tmp}" in worker
    assert "-J emunet-gpu" in lines
    assert "export OMP_NUM_THREADS=8" in script
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in script  # no sampling profiler
    # retire 10 min (± 2.5 min) before the 2 h walltime instead of being killed mid-block
    assert "export DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION=6600s" in script
    assert "export DASK_DISTRIBUTED__WORKER__LIFETIME__STAGGER=150s" in script


def test_several_gpus_per_job_use_dask_cuda_one_worker_per_gpu() -> None:
    config = SlurmConfig(gpus_per_job=4, gpu_type="a100", cores=32, memory="256GiB", **LOCAL)
    with slurm.make_cluster(config) as cluster:
        script = cluster.job_script()
        adaptive = cluster.adapt(minimum_jobs=0, maximum_jobs=3)
        assert (adaptive.minimum, adaptive.maximum) == (0, 12)  # counted in workers = GPUs
    assert "--gres=gpu:a100:4" in header(script)
    assert "--cpus-per-task=32" in header(script)
    worker = worker_line(script)
    assert "-m dask_cuda.cli " in worker  # pins CUDA_VISIBLE_DEVICES per worker process
    assert "--resources GPU=1" in worker
    assert "--memory-limit 64.00GiB" in worker and "--nthreads 1" in worker
    assert "--nanny" not in worker and "--nworkers" not in worker  # dask-cuda starts one per GPU
    assert "export OMP_NUM_THREADS=8" in script


def test_adaptive_settings_are_applied() -> None:
    config = SlurmConfig(minimum_jobs=0, maximum_jobs=8, **LOCAL)
    with slurm.make_cluster(config) as cluster:
        adaptive = cluster._adaptive  # set by cluster.adapt(...) inside make_cluster
        assert (adaptive.minimum, adaptive.maximum) == (0, 8)
        assert not cluster.workers  # nothing was submitted


def test_tls_workers_get_certificates(tls_files) -> None:
    with slurm.make_cluster(SlurmConfig(**LOCAL), security=tls_files.security()) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        worker = worker_line(cluster.job_script())
    assert f"--tls-ca-file {tls_files.ca}" in worker
    assert f"--tls-cert {tls_files.cert}" in worker and f"--tls-key {tls_files.key}" in worker
    assert "--protocol tls://" in worker


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus_per_job": 2, "launcher": "dask"}, "does not pin CUDA_VISIBLE_DEVICES"),
        ({"gpus_per_job": 0}, "gpus_per_job ≥ 1"),
        ({"gpus_per_job": 4, "cores": 2}, "cores ≥ gpus_per_job"),
        ({"memory": "lots"}, "memory like"),
        ({"launcher": "mpi"}, "launcher in"),
        ({"job_extra_directives": ("--gres=gpu:2",)}, "no GPU request"),
        ({"job_extra_directives": ("--gpus-per-node=2",)}, "no GPU request"),
        ({"walltime": "four hours"}, "SLURM walltime"),
        ({"walltime": 14400}, "quoted string"),
        ({"walltime": "00:15:00"}, "retire_margin below half"),
        ({"retire_margin": "10 fortnights"}, "retire_margin like"),
        ({"minimum_jobs": 4, "maximum_jobs": 2}, "maximum_jobs ≥"),
        ({"maximum_jobs": 0}, "maximum_jobs ≥"),
    ],
)
def test_bad_configs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SlurmConfig(**kwargs)


@pytest.mark.parametrize(
    "text, seconds",
    [("30", 1800), ("30:15", 1815), ("04:00:00", 14400), ("1-00", 86400), ("1-2:30", 95400), ("2-01:00:05", 176405)],
)
def test_walltime_formats(text: str, seconds: int) -> None:
    assert slurm.walltime_seconds(text) == seconds


def test_config_file_and_environment_overrides(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The example SlurmConfig file renders (dry run, nothing submitted); EMUNET_SLURM_* win."""
    monkeypatch.setenv("EMUNET_SLURM_SCHEDULER_HOST", "127.0.0.1")
    monkeypatch.setenv("EMUNET_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("EMUNET_SLURM_MAXIMUM_JOBS", "32")
    config = SlurmConfig.from_yaml(DEPLOY / "slurm" / "emunet-slurm.yaml")
    assert (config.partition, config.maximum_jobs, config.minimum_jobs) == ("gpu-long", 32, 1)
    assert slurm.main([str(DEPLOY / "slurm" / "emunet-slurm.yaml"), "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "--gres=gpu:1" in header(script) and "-p gpu-long" in header(script)
    assert "--resources GPU=1" in worker_line(script)


def test_unknown_config_keys_and_unquoted_walltimes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    path.write_text("partiton: gpu\n")
    with pytest.raises(ValueError, match="unknown \\['partiton'\\]"):
        SlurmConfig.from_yaml(path, environ={})
    path.write_text("walltime: 4:00:00\n")  # YAML 1.1: the integer 14400
    with pytest.raises(ValueError, match="quoted string"):
        SlurmConfig.from_yaml(path, environ={})


def test_jobqueue_yaml_example_renders_a_gpu_job() -> None:
    """deploy/slurm/jobqueue.yaml, as ~/.config/dask/jobqueue.yaml, alone makes GPU workers."""
    from dask_jobqueue import SLURMCluster

    settings = yaml.safe_load((DEPLOY / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    with dask.config.set({f"jobqueue.slurm.{key}": value for key, value in settings.items()}):
        with SLURMCluster(scheduler_options={"host": "127.0.0.1", "dashboard_address": None}) as cluster:
            script = cluster.job_script()
    lines = header(script)
    for directive in ("--gres=gpu:1", "-p gpu", "--cpus-per-task=8", "--mem=64G", "-t 04:00:00"):
        assert directive in lines
    worker = worker_line(script)
    assert "--resources GPU=1" in worker and "--nthreads 1" in worker and "--nworkers" not in worker
    assert "DASK_DISTRIBUTED__WORKER__LIFETIME__DURATION=13800s" in script  # 4 h − 10 min


FAKE_SBATCH = """#!/usr/bin/env bash
# stand-in for sbatch: keep a copy of the job script (dask-jobqueue deletes its file once
# sbatch returns, as real sbatch allows), run it here in its own session, print a job id
id=$((RANDOM * 32768 + RANDOM))
cp "$1" "$FAKE_SLURM_DIR/$id.sh"
setsid bash "$FAKE_SLURM_DIR/$id.sh" > "$FAKE_SLURM_DIR/$id.log" 2>&1 < /dev/null &
echo $! > "$FAKE_SLURM_DIR/$id.pid"
echo "Submitted batch job $id"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for id in "$@"; do kill -TERM -- "-$(cat "$FAKE_SLURM_DIR/$id.pid")" 2>/dev/null || true; done
"""


def _double(x: int) -> int:
    return 2 * x


def test_adaptive_cluster_starts_a_gpu_worker_when_work_arrives(tmp_path: Path, monkeypatch) -> None:
    """End to end without SLURM: stand-in sbatch/scancel run the rendered job script on this
    machine. Work that asks for a GPU makes the adaptive cluster submit a job, whose worker
    joins with GPU=1 and runs it; closing the cluster cancels the job."""
    from distributed import Client

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    config = SlurmConfig(
        cores=1, memory="2GiB", minimum_jobs=0, maximum_jobs=1, python=sys.executable,
        local_directory=str(tmp_path / "scratch"), **LOCAL,
    )
    with slurm.make_cluster(config) as cluster, Client(cluster) as client:
        assert not cluster.workers
        future = client.submit(_double, 21, resources={"GPU": 1}, pure=False)
        assert future.result(timeout=60) == 42
        (info,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert info["resources"] == {"GPU": 1} and info["nthreads"] == 1
        assert list(client.run(_omp_threads).values()) == ["1"]
        assert list(client.run(profiler_on).values()) == [False]
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert len(pids) == 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(pids[0]):
        time.sleep(0.2)
    assert not _alive(pids[0]), "scancel did not stop the job"


def _omp_threads() -> str:
    return os.environ["OMP_NUM_THREADS"]



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
