"""The version written into provenance, read from the installed package's metadata.

`pipeline` never imports the `emunet` package (a layer may not look up to the CLI above it);
the distribution's metadata says the same thing without the import.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "emunet"


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed emunet distribution's version, or ``0.0.0+unknown`` from a bare source tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0.0.0+unknown"


__all__ = ["package_version"]
