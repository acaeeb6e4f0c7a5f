"""Shared fixtures of the reliability tests: a tiny checkpoint, a synthetic Zarr volume,
the `emunet` CLI (with `segment` registered), and helpers to snapshot an output tree."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
import zarr

from tests.conftest import save_tiny_checkpoint

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
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=1)


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    from unetcore.synthetic import synthetic_em_volume

    return synthetic_em_volume(SHAPE, seed=2).image


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> Path:
    if chunks is None:
        chunks = tuple(max(1, min(c, s)) for c, s in zip(CHUNKS, data.shape)) if data.ndim == 3 else data.shape
    zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                      config={"write_empty_chunks": True})[...] = data  # a complete volume: every chunk stored
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


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` until true; an AssertionError naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- S3 and a fault proxy
SECRET = "rel-s3cr3t-never-logged"


@pytest.fixture(scope="session")
def moto_endpoint(s3_server: str) -> str:
    """The shared moto S3 server on 127.0.0.1 (tests/conftest.py)."""
    return s3_server


class FaultRule:
    """One armed fault: requests whose path contains `match` (and whose method is in
    `methods`, if given) get `mode` while `budget` lasts (``None`` = forever).

    Modes (all real HTTP/TCP behaviour, nothing mocked):

    * ``"503"``: a 503 SlowDown error response;
    * ``"slow"``: forwarded, but the response is held back `delay` seconds;
    * ``"stall"``: no response for `delay` seconds (longer than the client's read timeout),
      then the connection is reset;
    * ``"reset"``: the connection is reset (TCP RST) before the request reaches S3;
    * ``"drop"``: forwarded (a PUT lands), then the connection is reset: the reply is lost;
    * ``"cut"``: forwarded; the status, headers and half of the body are sent, then reset.

    `hits` counts the faults injected, `seen` every matching request (faulted or not);
    `events` lists them as (monotonic time, method, path, faulted).
    """

    MODES = ("503", "slow", "stall", "reset", "drop", "cut")

    def __init__(self, match: str, mode: str = "503", budget: int | None = None, delay: float = 0.0,
                 methods: tuple[str, ...] | None = None) -> None:  # fmt: skip
        if mode not in self.MODES:
            raise ValueError(f"expected a mode in {self.MODES}, got {mode!r}")
        self.match, self.mode, self.budget, self.delay = match, mode, budget, delay
        self.methods = tuple(m.upper() for m in methods) if methods else None
        self.hits = 0
        self.seen = 0
        self.events: list[tuple[float, str, str, bool]] = []

    def __repr__(self) -> str:
        return f"FaultRule({self.match!r}, {self.mode}, budget={self.budget}, hits={self.hits}, seen={self.seen})"


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of moto.

    Legacy single fault: requests whose path contains `match` get a 503 while `budget` lasts
    (``None`` = forever); `hits` counts them. More faults: `arm` a `FaultRule` (the first
    armed rule that matches a request decides; the legacy fault is checked first)."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import socket
        import struct
        import threading
        import time
        from urllib.parse import urlparse

        self.match: str | None = None
        self.budget: int | None = 0
        self.hits = 0
        self.rules: list[FaultRule] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        up = urlparse(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _fault(self) -> FaultRule | str | None:
                """The legacy fault ("503"), the rule to apply, or None (forward untouched)."""
                with proxy.lock:
                    if proxy.match is not None and proxy.match in self.path:
                        if proxy.budget is None or proxy.budget > 0:
                            if proxy.budget is not None:
                                proxy.budget -= 1
                            proxy.hits += 1
                            return "503"
                    for rule in proxy.rules:
                        if rule.match not in self.path or (rule.methods and self.command not in rule.methods):
                            continue
                        rule.seen += 1
                        faulted = rule.budget is None or rule.budget > 0
                        rule.events.append((time.monotonic(), self.command, self.path, faulted))
                        if not faulted:
                            return None
                        if rule.budget is not None:
                            rule.budget -= 1
                        rule.hits += 1
                        return rule
                    return None

            def _abort(self) -> None:
                """Close the connection with a TCP RST, whatever was (not) sent."""
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self.rfile.close()  # drop the makefile's reference, so close() closes the fd
                self.connection.close()

            def _upstream(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp.status, resp.getheaders(), resp.read()
                finally:
                    conn.close()

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes, cut: bool = False) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2] if cut else data)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = self._fault()
                mode = fault if isinstance(fault, str) else (fault.mode if fault else None)
                if mode == "503":
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if mode in ("stall", "reset"):
                    if mode == "stall":
                        proxy.closing.wait(fault.delay)
                    self._abort()
                    return
                status, headers, data = self._upstream(body)
                if mode == "drop":
                    self._abort()
                    return
                if mode == "slow":
                    time.sleep(fault.delay)
                if mode == "cut" and len(data) > 1 and self.command != "HEAD":
                    self._reply(status, headers, data, cut=True)
                    self._abort()
                    return
                self._reply(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def arm(self, match: str, mode: str = "503", budget: int | None = None, delay: float = 0.0,
            methods: tuple[str, ...] | None = None) -> FaultRule:  # fmt: skip
        """Add a fault rule (see `FaultRule`); returned so a test can read its counters."""
        rule = FaultRule(match, mode, budget, delay, methods)
        with self.lock:
            self.rules.append(rule)
        return rule

    def disarm(self) -> None:
        """Remove every fault (the legacy one and all rules)."""
        with self.lock:
            self.match, self.budget = None, 0
            self.rules = []

    def close(self) -> None:
        self.closing.set()
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
    _fault_proxy.disarm()
    _fault_proxy.hits = 0
    yield _fault_proxy
    _fault_proxy.disarm()
