"""Shared fixtures: the real EM data in ../shared/data (override with EMUNET_DATA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def save_tiny_checkpoint(path: Path, seed: int) -> Path:
    """`preset("tiny").replace(base_channels=4)` with weights drawn from `seed`, as safetensors:
    the small real model the pipeline, CLI and reliability tests run."""
    import torch

    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    torch.manual_seed(seed)
    return save_checkpoint(path, UNet(preset("tiny").replace(base_channels=4)), Normalization())


def data_dir() -> Path:
    return Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data"))


_MIGRATED_DB: list[Path] = []  # the copy `prefect_api` takes of its database, freshly migrated


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[None]:
    """Flows in this session report to a temporary server with its own SQLite database.

    Right after the start its database (migrated, still empty) is copied aside for
    `prefect_home`."""
    import sqlite3

    from emunet.cli.flow_commands import import_prefect

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry racing the migration
    import_prefect()  # with the process's real stderr (see its docstring)
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # the first start migrates the database
        source = PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1]
        copy = tmp_path_factory.mktemp("prefect-migrated") / "prefect.db"
        live, target = sqlite3.connect(source), sqlite3.connect(copy)
        try:
            live.backup(target)  # a consistent copy while the server runs
        finally:
            live.close()
            target.close()
        _MIGRATED_DB[:] = [copy]
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_api) -> str:
    """The session server's API, for a subprocess to report to (its PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture()
def prefect_home(prefect_api, tmp_path) -> Path:
    """A temporary PREFECT_HOME for a Prefect server the test starts itself (the temporary
    server of an `emunet` subprocess, `prefect server start`), on 127.0.0.1 as always.

    It holds a copy of the session server's freshly migrated, empty database: the server starts
    as on a machine that ran Prefect before, without the first start's migration (~15 s on 2
    busy cores). A first start on a new machine is what `prefect_api` itself does."""
    import shutil

    home = tmp_path / "prefect-home"
    home.mkdir()
    shutil.copyfile(_MIGRATED_DB[0], home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def local_scheduler() -> Iterator[str]:
    """One CPU cluster for the session: 2 worker processes with one GPU slot each (the segment
    default), reached through its address (the "existing scheduler" path). Tests that need a
    cluster of their own (killed workers, memory limits, a counted model load) start one."""
    from pipeline.cluster import ClusterConfig, local_cluster

    cluster, _, _ = local_cluster(ClusterConfig(workers=2, torch_threads=1))
    with cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; absent only outside CI (CI always has it)."""
    path = data_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"expected the real EM data at {path} in CI; got nothing there")
        pytest.skip(f"real EM data not found at {path} (set EMUNET_DATA)")
    return path


@pytest.fixture(scope="session")
def isbi_dir(shared_data: Path) -> Path:
    return shared_data / "isbi2012"


@pytest.fixture(scope="session")
def isbi_labels(isbi_dir: Path):
    import tifffile

    return tifffile.imread(isbi_dir / "train-labels.tif")


@pytest.fixture(scope="session")
def isbi_images(isbi_dir: Path):
    import tifffile

    return tifffile.imread(isbi_dir / "train-volume.tif")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port); yields its endpoint URL."""
    import logging

    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in reports
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def app():
    """The real `emunet` Typer app, with every command registered."""
    from emunet.cli.app import app

    return app


@pytest.fixture(scope="session")
def runner():
    from typer.testing import CliRunner

    return CliRunner()
