"""The resume ledger: marks, summaries, concurrent writers, S3; a resumed run computes only
the rest and equals a clean run (property)."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.blocks import run_plan_locally
from pipeline.geometry import Roi
from pipeline.ledger import Ledger
from pipeline.output import OutputOptions, create_output, open_output
from pipeline.plan import make_plan
from tests.pipeline.conftest import write_zarr
from unetcore.config import preset


def test_marks_and_summary(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "out.zarr"), 25)
    assert ledger.summary().done == 0 and ledger.summary().total == 25
    for i in (0, 3, 24):
        ledger.mark_done(i, seconds=1.5)
    ledger.mark_failed(7, ValueError("bad block"), Roi((0, 0, 16), (1, 16, 16)))
    ledger.mark_failed(3, "transient")  # failed once, done since: not a failure
    summary = ledger.summary()
    assert (summary.done, summary.total, summary.complete) == (3, 25, False)
    assert summary.failed_ids == [7] and summary.failed[0].error == "ValueError: bad block"
    assert summary.failed[0].write_roi == {"offset": [0, 0, 16], "shape": [1, 16, 16]}
    assert ledger.is_done(3) and not ledger.is_done(7)
    assert list(ledger.pending_ids([0, 1, 2, 3, 4])) == [1, 2, 4]
    assert summary.to_dict()["todo"] == 22
    with pytest.raises(IndexError):
        ledger.mark_done(25)
    ledger.reset()
    assert ledger.summary().done == 0 and ledger.summary().failed == ()


def test_many_blocks_use_subdirectories(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "o.zarr"), 30_000)
    ledger.mark_done(5)
    ledger.mark_done(25_123)
    assert ledger.done_ids() == [5, 25_123]
    assert (tmp_path / "o.zarr" / "ledger" / "done" / "2" / "25123").is_file()


def test_concurrent_writers_lose_no_marks(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "out.zarr"), 400)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ledger.mark_done, range(400)))
    assert ledger.summary().complete


def test_ledger_on_s3(s3) -> None:
    url = f"s3://{s3['bucket']}/out.zarr"
    ledger = Ledger(url, 10, s3["storage_options"])
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ledger.mark_done, range(0, 10, 2)))
    ledger.mark_failed(3, RuntimeError("worker died"))
    summary = Ledger(url, 10, s3["storage_options"]).summary()
    assert summary.done == 5 and summary.failed_ids == [3]


class Counting:
    """Wraps a predictor and records which blocks' regions it was asked for."""

    def __init__(self, inner):
        self.inner, self.model, self.calls = inner, inner.model, 0

    def predict_region(self, arrays, lo, hi):
        self.calls += 1
        return self.inner.predict_region(arrays, lo, hi)


def test_rerun_skips_done_blocks(tmp_path: Path, predictor) -> None:
    volume = np.random.default_rng(2).integers(0, 256, (2, 32, 48), dtype=np.uint8)
    write_zarr(tmp_path / "in.zarr", volume, (2, 16, 16))
    plan = make_plan(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), volume.shape, predictor.model.config, block_shape=(1, 16, 16))
    create_output(plan)
    ledger = Ledger(plan.output_url, plan.num_blocks)
    for i in (0, 4, 5):
        ledger.mark_done(i)
    counting = Counting(predictor)
    run = run_plan_locally(plan, predictor=counting, resume=True)
    assert run.skipped == 3 and sorted(run.computed) == [1, 2, 3, 6, 7, 8, 9, 10, 11]
    assert counting.calls == 9 and ledger.summary().complete
    again = run_plan_locally(plan, predictor=counting, resume=True)
    assert again.computed == [] and counting.calls == 9


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, 11)), st.integers(0, 100))
def test_resumed_output_equals_a_clean_one(predictor, first_part: set[int], seed: int) -> None:
    volume = np.random.default_rng(seed).integers(0, 256, (3, 30, 40), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        write_zarr(f"{tmp}/in.zarr", volume, (3, 16, 16))
        options = OutputOptions(dtype="float32", mask=True)
        clean = make_plan(f"{tmp}/in.zarr", f"{tmp}/clean.zarr", volume.shape, predictor.model.config, block_shape=(3, 16, 16))
        run_plan_locally(clean, predictor=predictor, options=options)
        resumed = make_plan(f"{tmp}/in.zarr", f"{tmp}/resumed.zarr", volume.shape, predictor.model.config, block_shape=(3, 16, 16))
        ids = sorted(i for i in first_part if i < resumed.num_blocks)
        run_plan_locally(resumed, predictor=predictor, options=options, block_ids=ids)  # "interrupted"
        second = run_plan_locally(resumed, predictor=predictor, options=options, resume=True)
        assert sorted(second.computed) == sorted(set(range(resumed.num_blocks)) - set(ids))
        a, b = open_output(clean.output_url), open_output(resumed.output_url)
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.array("mask")[...], b.array("mask")[...])


def test_ledger_open_reads_the_plan(tmp_path: Path) -> None:
    plan = make_plan("in.zarr", str(tmp_path / "o.zarr"), (4, 40, 40), preset("tiny"), block_shape=(2, 16, 16))
    create_output(plan)
    assert Ledger.open(plan.output_url).num_blocks == plan.num_blocks == 18
