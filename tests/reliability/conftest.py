"""Shared fixtures of the reliability tests: a tiny checkpoint, a synthetic Zarr volume,
the `emunet` CLI (with `segment` registered), and helpers to snapshot an output tree."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
import zarr

SHAPE = (4, 48, 48)  # 2 × 2 × 2 = 8 blocks of BLOCK
BLOCK = (2, 24, 24)
CHUNKS = (1, 24, 24)


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch) -> None:
    """Workers share 2 busy cores: oversubscribed torch threads make everything 4× slower."""
    monkeypatch.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """`preset("tiny").replace(base_channels=4)`, deterministic weights, as safetensors."""
    import torch

    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_checkpoint(path, UNet(preset("tiny").replace(base_channels=4)), Normalization())


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    from unetcore.synthetic import synthetic_em_volume

    return synthetic_em_volume(SHAPE, seed=2).image


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> Path:
    if chunks is None:
        chunks = tuple(max(1, min(c, s)) for c, s in zip(CHUNKS, data.shape)) if data.ndim == 3 else data.shape
    zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)[...] = data
    return path


@pytest.fixture()
def volume(tmp_path, image) -> Path:
    """A fresh (4, 48, 48) uint8 synthetic EM volume, one (1, 24, 24) chunk per file."""
    return write_zarr(tmp_path / "in.zarr", image, CHUNKS)


@pytest.fixture(scope="session")
def cli(app) -> typer.Typer:
    """The real `emunet` app."""
    return app


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `path`: (bytes, mtime_ns); empty when nothing is there."""
    if not path.exists():
        return {}
    if path.is_file():
        return {str(path): (path.read_bytes(), path.stat().st_mtime_ns)}
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(path))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def chunk_files(array_path: Path) -> list[Path]:
    """The chunk files of a Zarr v3 array (default `c/` key encoding)."""
    return sorted(p for p in (array_path / "c").rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def local_scheduler() -> Iterator[str]:
    """A CPU cluster of 2 worker processes with one GPU slot each (the segment default)."""
    from pipeline.cluster import ClusterConfig, local_cluster

    cluster, _, _ = local_cluster(ClusterConfig(workers=2, torch_threads=1))
    with cluster:
        yield cluster.scheduler_address


# --------------------------------------------------------------------------- S3 and a fault proxy
SECRET = "rel-s3cr3t-never-logged"


@pytest.fixture(scope="session")
def moto_endpoint(s3_server: str) -> str:
    """The shared moto S3 server on 127.0.0.1 (tests/conftest.py)."""
    return s3_server


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of moto: requests whose path contains
    `match` get a 503 while `budget` lasts (``None`` = forever); `hits` counts them."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlparse

        self.match: str | None = None
        self.budget: int | None = 0
        self.hits = 0
        self.lock = threading.Lock()
        up = urlparse(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _fault(self) -> bool:
                with proxy.lock:
                    if proxy.match is None or proxy.match not in self.path:
                        return False
                    if proxy.budget is not None:
                        if proxy.budget <= 0:
                            return False
                        proxy.budget -= 1
                    proxy.hits += 1
                    return True

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self._fault():
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def _fault_proxy(moto_endpoint) -> Iterator[FaultProxy]:
    # One proxy for the session: fsspec caches S3 filesystems (and their keep-alive
    # connections) by their options, so a per-test proxy would be bypassed.
    proxy = FaultProxy(moto_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture()
def fault_proxy(_fault_proxy) -> Iterator[FaultProxy]:
    """The session's proxy, with no fault armed at the start and the end of the test."""
    _fault_proxy.match, _fault_proxy.budget, _fault_proxy.hits = None, 0, 0
    yield _fault_proxy
    _fault_proxy.match, _fault_proxy.budget = None, 0
