"""The ledger stays cheap to read at scale: roll-ups per group of done markers.

Local: the done mask is exact whatever is rolled up (marks, roll-ups, unmark, reset).
S3 (moto behind the counting proxy, 127.0.0.1): reading a finished ledger takes a number of
requests that does not grow with the number of blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

import pipeline.ledger as ledger_mod
from pipeline.ledger import Ledger
from tests.reliability.conftest import SECRET


@pytest.fixture()
def small_groups(monkeypatch) -> int:
    monkeypatch.setattr(ledger_mod, "GROUP_SIZE", 7)
    return 7


@pytest.mark.parametrize("seed", range(4))
def test_done_mask_is_exact_with_rollups(tmp_path, small_groups, seed) -> None:
    rng = np.random.default_rng(seed)
    n = 33  # groups of 7: four whole ones and one of 5
    ledger = Ledger(str(tmp_path / "out.zarr"), n)
    truth = np.zeros(n, dtype=bool)
    for _ in range(3):
        for block in rng.choice(n, size=int(rng.integers(5, 25)), replace=False):
            ledger.mark_done(int(block))
            truth[block] = True
        truth[:7] = True  # group 0 always complete: a roll-up exists
        for block in range(7):
            ledger.mark_done(block)
        assert np.array_equal(ledger.done_mask(), truth)
        rolled = ledger.complete_groups()
        assert rolled == {g for g in range(5) if truth[g * 7 : (g + 1) * 7].all()} and 0 in rolled
        assert np.array_equal(ledger.done_mask(), truth)  # read again, through the roll-ups
        victim = int(rng.integers(0, 7))
        ledger.unmark_done(victim)  # inside a rolled-up group
        truth[victim] = False
        assert 0 not in ledger.complete_groups() and np.array_equal(ledger.done_mask(), truth)
    ledger.reset()
    assert not ledger.done_mask().any() and ledger.complete_groups() == set()


def test_a_summary_skips_the_failure_markers_of_done_blocks(tmp_path, small_groups) -> None:
    ledger = Ledger(str(tmp_path / "out.zarr"), 10)
    for block in range(10):
        ledger.mark_failed(block, "boom")
    for block in range(8):
        ledger.mark_done(block)
    (tmp_path / "out.zarr" / "ledger" / "failed" / "3.json").write_bytes(b"\xff not json")  # never read now
    summary = ledger.summary()
    assert summary.done == 8 and summary.failed_ids == [8, 9] and all(f.error == "boom" for f in summary.failed)


def test_reading_a_finished_ledger_on_s3_takes_a_fixed_number_of_requests(moto_endpoint, fault_proxy, small_groups) -> None:
    import s3fs

    direct = s3fs.S3FileSystem(key="AKIDRELIABILITY", secret=SECRET, endpoint_url=moto_endpoint, skip_instance_cache=True)
    if not direct.exists("ledger-rollups"):
        direct.mkdir("ledger-rollups")
    options = {"key": "AKIDRELIABILITY", "secret": SECRET, "endpoint_url": fault_proxy.url, "skip_instance_cache": True}
    requests = {}
    for n in (21, 140):  # 3 and 20 groups
        ledger = Ledger(f"s3://ledger-rollups/out{n}.zarr", n, options)
        for block in range(n):
            ledger.mark_done(block)
        first = ledger.summary()  # lists every group once and writes its roll-up
        assert first.complete
        rule = fault_proxy.arm(f"/ledger-rollups/out{n}", mode="slow", delay=0.0)  # counts, delays nothing
        again = ledger.summary()
        fault_proxy.disarm()
        assert again.complete and again.done == n
        requests[n] = rule.seen
    # One listing of rollup/ and one of failed/, whatever the number of blocks (before the
    # roll-ups: one listing per group and a page per 1000 markers).
    assert requests[21] == requests[140] <= 3, requests
