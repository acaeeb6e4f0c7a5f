"""`emunet status`: done/total and failed blocks with coordinates and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.ledger import Ledger
from pipeline.output import create_output
from pipeline.plan import make_plan
from unetcore.config import preset


@pytest.fixture()
def output(tmp_path: Path) -> str:
    plan = make_plan("/data/in.zarr", str(tmp_path / "out.zarr"), (2, 40, 40), preset("tiny"), block_shape=(1, 16, 16))
    create_output(plan)
    ledger = Ledger(plan.output_url, plan.num_blocks)
    for i in range(10):
        ledger.mark_done(i)
    ledger.mark_failed(13, RuntimeError("CUDA error: out of memory"), plan.block(13).write_roi)
    return plan.output_url


def test_text(app, output: str) -> None:
    result = CliRunner().invoke(app, ["status", output])
    assert result.exit_code == 0, result.output
    assert "10/18 blocks done" in result.output and "1 failed" in result.output
    assert "block 13 at z,y,x (1, 16, 16)" in result.output and "out of memory" in result.output


def test_json(app, output: str) -> None:
    result = CliRunner().invoke(app, ["status", output, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["done"], report["total"], report["complete"]) == (10, 18, False)
    (failed,) = report["failed"]
    assert failed["block_id"] == 13 and failed["write_offset"] == [1, 16, 16] and failed["grid_index"] == [1, 1, 1]
    assert "out of memory" in failed["error"]


def test_not_an_output(app, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", str(tmp_path / "nothing.zarr")])
    assert result.exit_code == 2 and "Traceback" not in result.output
