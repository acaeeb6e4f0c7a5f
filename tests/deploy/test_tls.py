"""TLS for multi-node traffic: a tls:// cluster with the GPU resource, and who may connect.

The certificates are a throw-away CA and a node certificate it signed (conftest). Everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import dask
import pytest
from distributed import Client, LocalCluster

from tests.deploy.conftest import write_tls_files

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:Port 8787 is already in use")]


def _gpu_task(x: int) -> int:
    return x + 1


@pytest.fixture(scope="module")
def tls_cluster(tls_files):
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tls",
        security=tls_files.security(),
        resources={"GPU": 1},
        dashboard_address=None,
    ) as cluster:
        yield cluster


def test_tls_cluster_runs_a_gpu_task(tls_cluster) -> None:
    assert tls_cluster.scheduler_address.startswith("tls://127.0.0.1:")
    with Client(tls_cluster) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert [w["resources"] for w in workers.values()] == [{"GPU": 1}]
        assert all(address.startswith("tls://") for address in workers)
        assert client.submit(_gpu_task, 41, resources={"GPU": 1}, pure=False).result(timeout=30) == 42


def test_client_takes_tls_from_dask_config(tls_cluster, tls_files) -> None:
    """`emunet segment --scheduler tls://…` builds a plain Client(address): the certificates
    then come from the Dask config (DASK_DISTRIBUTED__COMM__TLS__* variables or YAML)."""
    settings = {
        "distributed.comm.tls.ca-file": str(tls_files.ca),
        "distributed.comm.tls.client.cert": str(tls_files.cert),
        "distributed.comm.tls.client.key": str(tls_files.key),
    }
    with dask.config.set(settings), Client(tls_cluster.scheduler_address, timeout="10s") as client:
        assert client.submit(_gpu_task, 1, resources={"GPU": 1}, pure=False).result(timeout=30) == 2


def test_certificate_from_another_ca_is_refused(tls_cluster, tmp_path) -> None:
    rogue = write_tls_files(tmp_path, "rogue")
    with pytest.raises(OSError, match="certificate"):  # distributed's FatalCommClosedError
        Client(tls_cluster.scheduler_address, security=rogue.security(), timeout="3s")


def test_client_without_certificates_is_refused(tls_cluster) -> None:
    with pytest.raises(TypeError, match="ssl_context"):
        Client(tls_cluster.scheduler_address, timeout="3s")
