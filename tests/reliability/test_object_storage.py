"""Object storage with injected faults: moto behind a fault-injecting proxy. Transient 503s
are retried and the run completes; a persistent failure fails its blocks after a bounded
number of tries in bounded time; the secret key appears in no log, attribute or ledger file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.reliability.conftest import SECRET

SHAPE = (4, 48, 48)
BLOCK = (1, 48, 48)  # 4 blocks
CHUNKS = (1, 24, 24)  # 4 chunks per block


@pytest.fixture()
def s3_input(moto_endpoint, fault_proxy, monkeypatch, request, image):
    """The synthetic volume at s3://bucket/in.zarr (written directly to moto); the process's
    AWS environment points at the proxy."""
    import s3fs

    bucket = "rel-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    direct = {"key": "AKIDRELIABILITY", "secret": SECRET, "endpoint_url": moto_endpoint}
    fs = s3fs.S3FileSystem(**direct)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    store = zarr.storage.FsspecStore.from_url(f"s3://{bucket}/in.zarr", storage_options=direct)
    zarr.create_array(store, shape=SHAPE, chunks=CHUNKS, dtype="uint8")[...] = image
    for k, v in {"AWS_ACCESS_KEY_ID": "AKIDRELIABILITY", "AWS_SECRET_ACCESS_KEY": SECRET,
                 "AWS_ENDPOINT_URL": fault_proxy.url, "AWS_ENDPOINT_URL_S3": fault_proxy.url,
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    return f"s3://{bucket}/in.zarr"


@pytest.fixture()
def threaded_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1},
                      dashboard_address=None) as cluster, Client(cluster) as c:  # fmt: skip
        yield c


def config(**kw):
    from pipeline.segment import SegmentConfig

    return SegmentConfig(**{"block_shape": BLOCK, "progress": False, "torch_threads": 1, "blocks_per_task": 1, "device": "cpu", **kw})


def scan_for_secret(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_transient_503s_are_retried_and_the_run_completes(s3_input, fault_proxy, threaded_client, checkpoint,
                                                          image, tmp_path, caplog, capfd) -> None:  # fmt: skip
    from pipeline.segment import segment

    caplog.set_level(logging.DEBUG)
    clean = segment(s3_input, tmp_path / "clean.zarr", checkpoint, config(), client=threaded_client)
    assert clean.ok
    fault_proxy.match, fault_proxy.budget = "/in.zarr/c/", 12  # the first 12 chunk requests fail
    result = segment(s3_input, tmp_path / "out.zarr", checkpoint, config(), client=threaded_client)
    assert fault_proxy.hits == 12 and fault_proxy.budget == 0
    assert result.ok and result.computed == 4
    a = zarr.open_array(str(tmp_path / "out.zarr" / "probability"))[...]
    assert np.array_equal(a, zarr.open_array(str(tmp_path / "clean.zarr" / "probability"))[...])
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err
    assert scan_for_secret(tmp_path) == []


def test_a_persistent_failure_is_bounded_and_reported(s3_input, fault_proxy, threaded_client, checkpoint,
                                                      tmp_path, caplog, capfd) -> None:  # fmt: skip
    from pipeline.ledger import Ledger
    from pipeline.segment import segment

    caplog.set_level(logging.DEBUG)
    fault_proxy.match, fault_proxy.budget = "/in.zarr/c/2/", None  # z = 2 always fails
    t0 = time.monotonic()
    result = segment(s3_input, tmp_path / "out.zarr", checkpoint, config(retries=2), client=threaded_client)
    elapsed = time.monotonic() - t0
    failed = sorted(f.block_id for f in result.failed)
    assert failed == [2] and result.computed == 3
    tries = {f.block_id: f.tries for f in result.failed}
    assert set(tries.values()) == {2}, tries  # retried as transient, bounded by SegmentConfig.retries
    # requests: 1 block × 4 chunks read × 2 tries × 2 botocore attempts × ≤ 5 s3fs retries
    assert 0 < fault_proxy.hits <= 1 * 4 * 2 * 2 * 5, fault_proxy.hits
    assert elapsed < 40
    summary = Ledger(str(tmp_path / "out.zarr"), 4).summary()
    assert summary.failed_ids == failed and all("503" in f.error or "SlowDown" in f.error or "Service" in f.error for f in summary.failed), summary.failed
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err
    assert scan_for_secret(tmp_path) == []
