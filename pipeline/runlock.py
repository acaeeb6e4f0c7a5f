"""One run at a time per output: a lock object in the output's ledger.

Two ``--resume`` runs of one output would each compute every remaining block (twice the
work, and two writers per chunk). The run that writes an output holds
``OUT/ledger/run.lock``: a small JSON object (host, pid, start, heartbeat, token) created
exclusively (``O_EXCL`` locally; a conditional PUT, ``If-None-Match: *``, on S3). A second
run finds it and is refused with who holds it, unless the lock is stale:

* its process is gone (same host, no such pid): a run that was killed, e.g. by SIGKILL;
* or its heartbeat, refreshed every `HEARTBEAT_S` while the run lasts, is older than
  `STALE_S` (a run on another host that died with its machine).

A stale lock is taken over. The lock is released when the run ends, however it ends.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.volume import fsspec_filesystem, is_remote, redact_url

LOCK = "ledger/run.lock"
HEARTBEAT_S = 10.0  # how often a running run refreshes its lock
STALE_S = 60.0  # a lock whose heartbeat is older than this belongs to a dead run


class OutputBusyError(FileExistsError):
    """Another live run is writing this output."""


def _holder(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, OSError):  # unreadable: a torn write of a dead run
        return {}
    return data if isinstance(data, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _alive(holder: Mapping[str, Any]) -> bool:
    """Whether the holder may still run: its process on this host, or a fresh heartbeat."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return pid_alive(holder["pid"])
    beat = holder.get("heartbeat")
    return isinstance(beat, (int, float)) and time.time() - beat < STALE_S


def _describe(holder: Mapping[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def check_free(output_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse (`OutputBusyError`) when a live run holds the output's lock; writes nothing."""
    fs, path = fsspec_filesystem(output_url, storage_options)
    holder = _holder(fs, f"{path.rstrip('/')}/{LOCK}")
    if holder and _alive(holder):
        raise OutputBusyError(
            f"expected no other run writing {redact_url(output_url)}, got one ({_describe(holder)}); wait for it to "
            "end (then --resume computes whatever is left), or stop it first"
        )


@dataclass
class RunLock:
    """A held lock; `release` (or the context manager's exit) gives it up."""

    url: str
    storage_options: Mapping[str, Any] | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def _path(self) -> tuple[Any, str]:
        fs, path = fsspec_filesystem(self.url, self.storage_options)
        return fs, f"{path.rstrip('/')}/{LOCK}"

    def _body(self, started: str) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "started": started,
                           "heartbeat": time.time()}).encode()  # fmt: skip

    def _create(self, fs: Any, path: str, body: bytes) -> bool:
        """Create the lock object only if absent; False if it exists."""
        if not is_remote(self.url):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return True
        try:
            fs.pipe_file(path, body, IfNoneMatch="*")
        except FileExistsError:
            return False
        except TypeError:  # a store without conditional writes: check, then write
            if fs.exists(path):
                return False
            fs.pipe_file(path, body)
        return True

    def acquire(self) -> RunLock:
        fs, path = self._path
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for _ in range(2):
            if self._create(fs, path, self._body(started)):
                self._started = started
                self._thread = threading.Thread(target=self._beat, name="emunet-run-lock", daemon=True)
                self._thread.start()
                return self
            holder = _holder(fs, path)
            if holder and _alive(holder):
                raise OutputBusyError(
                    f"expected no other run writing {redact_url(self.url)}, got one ({_describe(holder)}); wait for it "
                    "to end (then --resume computes whatever is left), or stop it first"
                )
            fs.rm_file(path)  # stale: its run is gone
        raise OutputBusyError(f"expected to take over the stale run lock of {redact_url(self.url)}, got another run first")

    def _beat(self) -> None:
        fs, path = self._path
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if (_holder(fs, path) or {}).get("token") == self.token:
                    fs.pipe_file(path, self._body(self._started))
            except OSError:  # the next beat tries again; a lock left stale is taken over later
                pass

    def release(self) -> None:
        self._stop.set()
        fs, path = self._path
        try:
            if (_holder(fs, path) or {}).get("token") == self.token:
                fs.rm_file(path)
        except OSError:  # pragma: no cover - left stale: the next run takes it over
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK", "OutputBusyError", "RunLock", "check_free"]
