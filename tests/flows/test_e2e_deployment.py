"""The deployment path with real parts: `prefect server start`, a process work pool,
`prefect deploy --all` from the repository root, `prefect worker start`, and a run of the
segment deployment triggered through the API on a tiny Zarr volume.

Everything listens on 127.0.0.1 only and lives under `tmp_path` (PREFECT_HOME, SQLite);
the server and the worker run in their own process groups, terminated at the end. On a
failure the server and worker logs and the flow run's own log are printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.flows.conftest import DEMO_MODEL, ROOT, write_zarr

pytestmark = pytest.mark.slow

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Services:
    """The server and worker subprocesses, their logs and environment."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.api = home, f"http://127.0.0.1:{port}/api"
        self.port = port
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll for scheduled runs every second (default 10)
            "PREFECT_LOGGING_LEVEL": "INFO",
            "EMUNET_SEGMENT_TORCH_THREADS": "1",
        }
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [PREFECT, *args], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([PREFECT, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        return done.stdout

    def wait_healthy(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["server"].poll() is not None:
                pytest.fail(f"prefect server exited with {self.procs['server'].returncode}\n{self.logs()}")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"prefect server not healthy after {timeout:.0f} s\n{self.logs()}")

    def logs(self, tail: int = 6000) -> str:
        parts = []
        for path in sorted(self.home.glob("*.log")):
            parts.append(f"----- {path.name} -----\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM to each process group (the worker before the server), SIGKILL after 20 s."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture()
def services(prefect_home) -> Iterator[Services]:
    """`prefect server start` on a free port of 127.0.0.1, its PREFECT_HOME under `tmp_path`
    (with a migrated, empty database: see `prefect_home`)."""
    services = Services(prefect_home, free_port())
    try:
        services.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(services.port), "--no-services")
        services.wait_healthy()
        yield services
    finally:
        services.stop()


def api_client(api: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Client:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: api})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return _Client()


def flow_run_log(client, flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(f"{log.timestamp:%H:%M:%S} {log.name}: {log.message}" for log in logs)


def test_segment_deployment_runs_on_a_process_worker(services: Services, tmp_path) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from unetcore.synthetic import synthetic_em_volume

    em = synthetic_em_volume((2, 64, 64), seed=11)
    image, labels, out = write_zarr(tmp_path / "in.zarr", em.image), write_zarr(tmp_path / "gt.zarr", em.labels), tmp_path / "seg.zarr"

    services.run("work-pool", "create", "emunet-process", "--type", "process")
    services.start("worker", "worker", "start", "--pool", "emunet-process", "--limit", "1")  # starts while we deploy
    deployed = services.run("--no-prompt", "deploy", "--all", timeout=240)
    assert "segment-volume/segment" in deployed, deployed

    params = {"input_url": image, "output_url": str(out), "checkpoint": str(DEMO_MODEL), "ground_truth_url": labels,
              "cluster": {"workers": 1}, "progress_interval_s": 1.0}  # fmt: skip
    with api_client(services.api) as client:
        deployment = client.read_deployment_by_name("segment-volume/segment")
        assert deployment.work_pool_name == "emunet-process"
        assert [s.active for s in deployment.schedules] == [False]  # the nightly example is inactive
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": params})
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.type.value in TERMINAL:
                break
            time.sleep(1)
        else:
            pytest.fail(f"flow run not finished after 240 s (state {state})\n{flow_run_log(client, run.id)}\n{services.logs()}")
        if state.type.value != "COMPLETED":
            pytest.fail(f"flow run ended {state.type.value}: {state.message}\n{flow_run_log(client, run.id)}\n{services.logs()}")
        artifacts = {
            a.key: a
            for a in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        }
        log = flow_run_log(client, run.id)

    assert set(artifacts) == {"segment-summary", "segment-metrics"}, log
    _bad_runs_are_refused(services, params, tmp_path)
    assert str(out) in artifacts["segment-summary"].data and "xr.open_zarr" in artifacts["segment-summary"].data
    assert "pixel_error" in str(artifacts["segment-metrics"].data)
    assert "Executing deployment step: set_working_directory" in log or "run-blocks" in log
    probability = zarr.open_group(str(out), mode="r")["probability"][:]
    assert probability.shape == (2, 64, 64) and probability.dtype == np.uint8 and 0 < probability.mean() < 255


def wait_terminal(client, run_id, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.type.value in TERMINAL:
            return state
        time.sleep(1)
    pytest.fail(f"flow run not finished after {timeout:.0f} s (state {state})\n{flow_run_log(client, run_id)}")


def _bad_runs_are_refused(services: Services, params: dict, tmp_path: Path) -> None:
    """Through the API of the same deployment: parameters that break its schema are refused by
    the server (no run is created); parameters that fit the schema but name a missing input
    give a run that ends Failed with the pipeline's message, and no output."""
    import httpx

    with api_client(services.api) as client:
        deployment = client.read_deployment_by_name("segment-volume/segment")
        runs_before = len(client.read_flow_runs())
        bad = {**params, "output_url": str(tmp_path / "never.zarr"), "batch_size": 0, "colour": "red"}
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment.id, parameters={"params": bad})
        assert refused.value.response.status_code in (409, 422), refused.value.response.text
        text = refused.value.response.text
        print(f"bad parameters refused: HTTP {refused.value.response.status_code}: {text[:300]}")
        assert "batch_size" in text or "colour" in text, text
        assert len(client.read_flow_runs()) == runs_before  # nothing was created

        missing = {**params, "input_url": str(tmp_path / "missing.zarr"), "output_url": str(tmp_path / "never.zarr")}
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"params": missing})
        state = wait_terminal(client, run.id)
        log = flow_run_log(client, run.id)
    assert state.type.value == "FAILED", f"{state}\n{log}"
    assert "no such path" in (state.message or "") and "check the path" in (state.message or ""), state.message
    assert not (tmp_path / "never.zarr").exists()
