"""Fixtures for the flow tests (the temporary Prefect API, `prefect_api`, is in tests/conftest.py): a tiny
synthetic volume with labels in Zarr, the committed demo model, and one Dask scheduler
whose single in-process worker declares a GPU slot (the "existing scheduler" path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from emunet.cli.flow_commands import import_prefect

# Import Prefect now, while stderr is the real one: its console log handler keeps the stream
# it sees, and pytest's capture streams are closed before Prefect's atexit hooks log.
import_prefect()

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "models" / "demo-synthetic.safetensors"
SHAPE = (4, 64, 64)  # 4 blocks of (1, 64, 64): the demo model's lattice is 8
BLOCK = (1, 64, 64)


def write_zarr(path: Path, array: np.ndarray) -> str:
    zarr.create_array(str(path), shape=array.shape, chunks=(1, *array.shape[1:]), dtype=array.dtype,
                      dimension_names=("z", "y", "x"))[...] = array  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def volume(tmp_path_factory) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(image URL, labels URL, image, labels): synthetic EM, one chunk per z slice."""
    from unetcore.synthetic import synthetic_em_volume

    em = synthetic_em_volume(SHAPE, seed=7)
    root = tmp_path_factory.mktemp("volume")
    return write_zarr(root / "image.zarr", em.image), write_zarr(root / "labels.zarr", em.labels), em.image, em.labels


@pytest.fixture(scope="session")
def scheduler() -> Iterator[str]:
    """A running scheduler with one threaded worker holding one GPU slot."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1},
                      dashboard_address=":0") as cluster:  # fmt: skip
        yield cluster.scheduler_address


def artifacts_of(flow_run_id) -> dict[str, object]:
    """The artifacts of a flow run, by key (read back through the API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}
