"""Shared fixtures: the real EM data in ../shared/data (override with EMUNET_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data"))


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
