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


def test_a_truncated_failure_marker_counts_as_failed(app, output: str) -> None:
    marker = Path(output) / "ledger" / "failed" / "13.json"
    marker.write_bytes(marker.read_bytes()[:20])  # damaged: cut mid-object
    (Path(output) / "ledger" / "failed" / "15.json").write_bytes(b"")  # empty
    result = CliRunner().invoke(app, ["status", output])
    assert result.exit_code == 0, result.output
    assert "10/18 blocks done" in result.output and "2 failed" in result.output
    assert "block 13 at z,y,x (1, 16, 16)" in result.output and "unreadable marker 13.json" in result.output
    assert "unreadable marker 15.json" in result.output and "Traceback" not in result.output


def _written(output: str) -> dict[str, bytes]:
    """Every file of the output outside the ledger, with its bytes."""
    root = Path(output)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and "ledger" not in p.parts}


def test_verify_finds_a_done_block_whose_chunk_was_deleted_and_repair_lets_resume_redo_it(app, output: str) -> None:
    import numpy as np

    from pipeline.output import open_output

    out = open_output(output)
    for i in range(10):  # the fixture marked 0..9 done without writing them: write them now
        out.write(out.plan.block(i).write_roi, np.full(out.plan.block(i).write_roi.shape, 0.5, np.float32))
    ok = CliRunner().invoke(app, ["status", output, "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "10 done block(s) checked in probability: every output chunk is there" in ok.output
    (Path(output) / "probability" / "c" / "0" / "1" / "1").unlink()  # block 4 = grid (0, 1, 1)
    before = _written(output)
    found = CliRunner().invoke(app, ["status", output, "--verify", "--json"])
    assert found.exit_code == 1, found.output
    report = json.loads(found.stdout)["verify"]
    assert report["missing"] == [{"block_id": 4, "missing": ["probability/c/0/1/1"]}] and not report["repaired"]
    assert Ledger(output, 18).is_done(4)  # --verify alone changes nothing
    text = CliRunner().invoke(app, ["status", output, "--verify"])
    assert text.exit_code == 1 and "block 4: missing probability/c/0/1/1" in text.output and "--repair" in text.output
    fixed = CliRunner().invoke(app, ["status", output, "--verify", "--repair"])
    assert fixed.exit_code == 0, fixed.output
    assert "9/18 blocks done" in fixed.output and "their done marks are removed" in fixed.output
    assert "block 4 at z,y,x (0, 16, 16)" in fixed.output and "output chunk missing" in fixed.output
    ledger = Ledger(output, 18)
    assert not ledger.is_done(4) and 4 in list(ledger.pending_ids()) and ledger.is_done(3)
    assert _written(output) == before  # only ledger markers were touched
    again = CliRunner().invoke(app, ["status", output, "--verify"])
    assert again.exit_code == 0 and "9 done block(s) checked" in again.output


def test_repair_needs_verify(app, output: str) -> None:
    result = CliRunner().invoke(app, ["status", output, "--repair"])
    assert result.exit_code == 2 and "--verify --repair" in result.output


def test_verify_checks_shards_and_the_mask_label_image(app, tmp_path: Path) -> None:
    import numpy as np

    from pipeline.output import OutputOptions

    plan = make_plan("/data/in.zarr", str(tmp_path / "s.zarr"), (1, 32, 32), preset("tiny"), block_shape=(1, 16, 16),
                     chunk_shape=(1, 8, 8), shard_shape=(1, 16, 16))  # fmt: skip
    out = create_output(plan, OutputOptions(mask=True))
    ledger = Ledger(plan.output_url, plan.num_blocks)
    for i in plan.block_ids():
        out.write(plan.block(i).write_roi, np.full((1, 16, 16), 0.75, np.float32))
        ledger.mark_done(i)
    (tmp_path / "s.zarr" / "labels" / "mask" / "0" / "c" / "0" / "1" / "0").unlink()  # the shard of block 2
    result = CliRunner().invoke(app, ["status", plan.output_url, "--verify", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)["verify"]
    assert report["arrays"] == ["probability", "mask", "labels/mask/0"] and report["checked"] == 4
    assert report["missing"] == [{"block_id": 2, "missing": ["labels/mask/0/c/0/1/0"]}]
