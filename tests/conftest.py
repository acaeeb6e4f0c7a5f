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


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Flows in this session report to a temporary server with its own SQLite database."""
    from emunet.cli.flow_commands import import_prefect

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry racing the migration
    import_prefect()  # with the process's real stderr (see its docstring)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # the first start migrates the database
        yield


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
