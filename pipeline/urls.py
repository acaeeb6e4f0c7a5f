"""Volume and output URLs: local paths, ``file://`` and fsspec URLs (``s3://``…).

Credentials never travel in a URL: `redact_url` strips user info, query and fragment from
anything written to attributes or logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def is_remote(url: str) -> bool:
    """True for fsspec URLs other than local files (``s3://``, ``gs://``, ``memory://``…)."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """``file:///a/b`` → ``/a/b``; other strings are returned unchanged."""
    if url.startswith("file://"):
        return url[len("file://") :] or "/"
    return url


def split_url(url: str) -> tuple[str, str]:
    """Split a volume URL into (store URL, path inside the store).

    ``a.zarr:raw/s0`` → (``a.zarr``, ``raw/s0``); ``a.zarr/raw/s0`` → (``a.zarr``,
    ``raw/s0``); anything without ``.zarr`` followed by a path is the store itself.
    """
    url = str(url)
    if not url:
        raise ValueError("expected a volume URL or path, got an empty string")
    colon = re.search(r"\.zarr:(?!//)", url)
    if colon:
        store, path = url[: colon.start() + 5], url[colon.end() :]
        return local_path(store), path.strip("/")
    slash = re.search(r"\.zarr/", url)
    if slash:
        store, path = url[: slash.start() + 5], url[slash.end() :]
        return local_path(store), path.strip("/")
    return local_path(url.rstrip("/") or url), ""


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (what goes into attrs and logs)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def join_url(url: str, *names: str) -> str:
    """Append path components to a store URL (local path or fsspec URL)."""
    out = url.rstrip("/")
    for name in names:
        if name:
            out = f"{out}/{name.strip('/')}"
    return out


def fsspec_filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """(filesystem, path) for a store URL; local paths use the local filesystem."""
    import fsspec

    if is_remote(url):
        return fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    fs = fsspec.filesystem("file")
    return fs, str(Path(local_path(url)).absolute())


__all__ = ["fsspec_filesystem", "is_remote", "join_url", "local_path", "redact_url", "split_url"]
