"""The ```python blocks of docs/guide-xarray.md run, in order, in one namespace, against a
small output laid out like `make demo`'s (demo-output/ under a temporary directory).

The output is made by the pipeline itself (plan, blocks, OME-Zarr output) with the
committed demo model, in this process: no Prefect and no Dask needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.flows.conftest import DEMO_MODEL, ROOT

GUIDE = ROOT / "docs" / "guide-xarray.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.fixture()
def demo_output(tmp_path, monkeypatch) -> Path:
    """demo-output/{input,ground-truth,segmentation}.zarr in a fresh working directory."""
    from emunet.cli.demo import write_image
    from pipeline.blocks import run_plan_locally
    from pipeline.plan import make_plan
    from unetcore.checkpoint import read_header
    from unetcore.config import UNetConfig
    from unetcore.synthetic import synthetic_em_volume

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "demo-output"
    folder.mkdir()
    em = synthetic_em_volume((3, 64, 64), seed=2)
    source = write_image(folder / "input.zarr", em.image)
    write_image(folder / "ground-truth.zarr", em.labels, "labels")
    config = UNetConfig.from_dict(read_header(DEMO_MODEL)["model_config"])
    plan = make_plan(source + "/0", str(folder / "segmentation.zarr"), em.image.shape, config, block_shape=(1, 64, 64),
                     voxel_size=(40.0, 4.0, 4.0))  # fmt: skip
    run_plan_locally(plan, DEMO_MODEL)
    return folder


def test_guide_has_runnable_blocks() -> None:
    blocks = python_blocks(GUIDE)
    assert len(blocks) >= 5 and "xr.open_zarr" in blocks[0]


def test_xarray_guide_snippets_run(demo_output, capsys) -> None:
    namespace: dict[str, object] = {"__name__": "guide"}
    for i, code in enumerate(python_blocks(GUIDE)):
        try:
            exec(compile(code, f"{GUIDE.name} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            pytest.fail(f"block {i + 1} of {GUIDE.name} failed: {type(exc).__name__}: {exc}\n{code}")
    printed = capsys.readouterr().out
    assert "probability" in printed and "pixel agreement at 0.5" in printed
    assert namespace["agreement"] > 0.8 and namespace["section"].shape == (64, 64)
    assert (demo_output.parent / "section-0.png").stat().st_size > 1000
    assert len(namespace["sizes"]) > 3  # neurons, not one segment for the whole volume
