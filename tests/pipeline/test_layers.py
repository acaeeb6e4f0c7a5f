"""The layers import downwards only: unetcore knows no pipeline, pipeline no Prefect and no CLI.

Read from the source (every import statement, including those inside functions), so an
import that only runs on a rare path is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

FORBIDDEN = {
    "unetcore": ("pipeline", "flows", "emunet", "prefect", "dask", "distributed", "zarr"),
    "pipeline": ("flows", "emunet", "prefect"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_downwards_only(package: str) -> None:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package]:
                found.append(f"{path.relative_to(ROOT)}: {name}")
    assert not found, f"expected {package}/ to import none of {FORBIDDEN[package]}, got {found}"
