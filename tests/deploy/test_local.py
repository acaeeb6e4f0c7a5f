"""The one-node launchers: deploy/local/cluster.py (in-process and as a script) and
deploy/local/start-dask-cuda.sh, on the CPU, 127.0.0.1 only.

Every worker must declare ``{"GPU": 1}``: block tasks request it, and a cluster without it
leaves them in "no-worker" forever.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client

from tests.deploy.conftest import DEPLOY, load_deploy, profiler_on

pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]

local = load_deploy("local/cluster.py")
SCRIPT = DEPLOY / "local" / "start-dask-cuda.sh"


def _where() -> tuple[str | None, str]:
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS", "")



def test_cpu_fallback_workers_advertise_one_gpu_slot_each() -> None:
    from distributed.system import MEMORY_LIMIT

    cluster = local.start_cluster(2, cpu=True, scheduler_port=0, dashboard_address=None)
    with cluster, Client(cluster) as client:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        for address, info in workers.items():
            assert address.startswith("tcp://127.0.0.1:")
            assert info["resources"] == {"GPU": 1}
            assert info["nthreads"] == 1
            assert info["memory_limit"] <= MEMORY_LIMIT / 2 + 1  # "auto" = split, not each the whole RAM
        threads = {omp for _, omp in client.run(_where).values()}
        assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}
        assert set(client.run(profiler_on).values()) == {False}  # Dask's sampling profiler slows blocks
        futures = [client.submit(_where, pure=False, resources={"GPU": 1}) for _ in range(4)]
        assert len(client.gather(futures)) == 4


def test_start_cluster_speaks_tls_with_security(tls_files) -> None:
    security = tls_files.security()
    with local.start_cluster(1, cpu=True, scheduler_port=0, dashboard_address=None, security=security) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster) as client:
            assert client.submit(_where, pure=False, resources={"GPU": 1}).result(timeout=30)


@pytest.mark.parametrize("n", [0, -1])
def test_start_cluster_rejects_no_workers(n: int) -> None:
    with pytest.raises(ValueError, match="Expected n_workers ≥ 1"):
        local.start_cluster(n, cpu=True)


def _read_until(proc: subprocess.Popen, prefix: str, deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r} before the launcher ended or timed out")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_launcher_script_prints_the_address_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, str(DEPLOY / "local" / "cluster.py"), "--cpu", "--workers", "1", "--port", "0",
           "--dashboard-address", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = _read_until(proc, "scheduler:", time.monotonic() + 60)
        address = line.split()[1]
        assert address.startswith("tcp://127.0.0.1:")
        with Client(address, timeout="10s") as client:
            infos = client.scheduler_info(n_workers=-1)["workers"].values()
            assert [w["resources"] for w in infos] == [{"GPU": 1}]
    finally:
        assert _stop(proc) == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda present: the script would use it"
)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_shell_script_pins_one_gpu_per_worker(tmp_path: Path, tls: bool, request: pytest.FixtureRequest) -> None:
    """Without dask-cuda the script starts one `dask worker` per GPU with CUDA_VISIBLE_DEVICES
    set to that GPU alone (no GPU is needed for the workers to start and report it)."""
    port, dashboard = _free_port(), _free_port()
    cmd = ["bash", str(SCRIPT), "--gpus", "3,5", "--port", str(port), "--dashboard-port", str(dashboard),
           "--local-directory", str(tmp_path / "dask"), "--python", sys.executable]
    security = None
    if tls:
        files = request.getfixturevalue("tls_files")
        cmd += ["--tls-ca-file", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]
        security = files.security()
    env = {k: v for k, v in os.environ.items() if k != "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        address = _read_until(proc, "scheduler:", time.monotonic() + 60).split()[1]
        assert address == f"{'tls' if tls else 'tcp'}://127.0.0.1:{port}"
        with Client(address, security=security, timeout="10s") as client:
            client.wait_for_workers(2, timeout=60)
            infos = client.scheduler_info(n_workers=-1)["workers"]
            assert [w["resources"] for w in infos.values()] == [{"GPU": 1}, {"GPU": 1}]
            assert all(a.startswith(address.split(":")[0]) for a in infos)
            devices = sorted(cuda for cuda, _ in client.run(_where).values())
            assert devices == ["3", "5"]
            assert set(client.run(profiler_on).values()) == {False}
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown option --bogus"),
        (["--cpu-workers", "two"], "expected --cpu-workers N"),
        (["--cpu-workers", "1", "--tls-ca-file", "/nonexistent"], "expected readable --tls-ca-file"),
    ],
)
def test_shell_script_rejects_bad_options(args: list[str], message: str) -> None:
    result = subprocess.run(["bash", str(SCRIPT), *args, "--python", sys.executable], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
