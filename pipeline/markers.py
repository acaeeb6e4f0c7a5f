"""Small JSON marker objects written whole: the one write rule of the ledgers.

A marker is one object; on a local file system it is written to a temporary name and
renamed (atomic), on an object store it is one PUT. So a reader sees a marker whole or not
at all, whatever the number of concurrent writers (`pipeline.ledger`, the pyramid's
region markers).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def put_marker(fs: Any, key: str, payload: dict[str, Any], *, remote: bool) -> None:
    """Write ``payload`` as JSON at ``key`` of ``fs`` (an fsspec filesystem), whole."""
    put_object(fs, key, json.dumps(payload).encode(), remote=remote)


def put_object(fs: Any, key: str, data: bytes, *, remote: bool) -> None:
    """Write ``data`` at ``key`` of ``fs`` whole: one PUT, or a temporary file renamed."""
    if remote:
        fs.pipe_file(key, data)
        return
    path = Path(key)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the first object of its directory (a mkdir per object costs more)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic on a local file system
    except BaseException:
        tmp.unlink(missing_ok=True)  # no temporary file left behind
        raise


__all__ = ["put_marker", "put_object"]
