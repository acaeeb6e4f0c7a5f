"""Object-storage faults beyond 503s, on real processes: a `LocalCluster` of 2 worker
processes reads (and writes) S3 through the fault proxy of `conftest.py` in front of moto,
all on 127.0.0.1. Slow responses, read timeouts, connection resets (before the response, after
a PUT landed, in the middle of a body) and 503s on output writes are retried and the output is
bitwise equal to a clean run; a persistent write failure fails its block after a bounded
number of tries, is never marked done, and a resumed run computes only that block.

How the workers are configured is what a user does: the environment, inherited by the
worker processes. ``AWS_ENDPOINT_URL`` = the proxy; ``AWS_MAX_ATTEMPTS=1`` (botocore does not
retry, so faults reach s3fs's own retries and then the pipeline's `RetryPolicy`);
``FSSPEC_S3_CONFIG_KWARGS`` = short connect/read timeouts, fsspec's own way of setting
`S3FileSystem` options from the environment (read by each process when it imports fsspec;
in this already running test process the same options go into ``fsspec.config.conf``).

Retry layers left (measured through the proxy's counters): the HTTP client re-sends a request
once, at once, when a reused keep-alive connection drops; s3fs retries 503 SlowDown, read
timeouts and cut bodies (5 tries for 503s and cut bodies), not "could not connect"; then
`RetryPolicy` retries the block's whole read or write (`SegmentConfig.retries` tries).
Budgets are chosen so that each fault kind gets past the lower layers and is retried by
`RetryPolicy`, except the slow responses (never an error) and the read timeouts (s3fs
absorbs them; a timeout that gets through is a botocore `ReadTimeoutError`, an `OSError`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zarr

from pipeline.ownership import Existing

from tests.reliability.conftest import SECRET

SHAPE = (4, 48, 48)
BLOCK = (1, 48, 48)  # 4 blocks, one z slice each
CHUNKS = (1, 24, 24)  # input: 4 chunks per block, in.zarr/c/<z>/<y>/<x>, y, x in {0, 1}
READ_TIMEOUT_S = 1.5  # slow responses come 0.5 s late: 1 s of margin on 2 busy cores
TIMEOUTS = {"connect_timeout": READ_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S}
INPUT_BUCKET = "s3faults-in"
CHUNK = "probability/c"  # output chunks = blocks (the plan's default): out.zarr/probability/c/<z>/0/0

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def s3_env(moto_endpoint, _fault_proxy) -> Iterator[dict[str, str]]:
    """The environment a user would set for S3 behind the proxy, with short timeouts."""
    import fsspec.config

    env = {
        "AWS_ACCESS_KEY_ID": "AKIDRELIABILITY", "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": _fault_proxy.url, "AWS_ENDPOINT_URL_S3": _fault_proxy.url,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard",
        "FSSPEC_S3_CONFIG_KWARGS": json.dumps(TIMEOUTS),
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "s3", {**fsspec.config.conf.get("s3", {}), "config_kwargs": dict(TIMEOUTS)})
        yield env


@pytest.fixture(scope="module")
def process_client(s3_env):
    """2 worker processes (one "GPU" slot each) started with `s3_env` in their environment."""
    from distributed import Client

    from pipeline.cluster import ClusterConfig, local_cluster

    cluster, _, _ = local_cluster(ClusterConfig(workers=2, torch_threads=1))
    with cluster, Client(cluster) as client:
        yield client


def _direct_fs(moto_endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key="AKIDRELIABILITY", secret=SECRET, endpoint_url=moto_endpoint, skip_instance_cache=True)


@pytest.fixture(scope="module")
def s3_volume(moto_endpoint, image) -> str:
    """The synthetic volume at s3://s3faults-in/in.zarr, written directly to moto."""
    fs = _direct_fs(moto_endpoint)
    if not fs.exists(INPUT_BUCKET):
        fs.mkdir(INPUT_BUCKET)
    direct = {"key": "AKIDRELIABILITY", "secret": SECRET, "endpoint_url": moto_endpoint}
    store = zarr.storage.FsspecStore.from_url(f"s3://{INPUT_BUCKET}/in.zarr", storage_options=direct)
    zarr.create_array(store, shape=SHAPE, chunks=CHUNKS, dtype="uint8", overwrite=True)[...] = image
    return f"s3://{INPUT_BUCKET}/in.zarr"


def config(**kw):
    from pipeline.segment import SegmentConfig

    base = {"block_shape": BLOCK, "progress": False, "torch_threads": 1, "blocks_per_task": 1, "device": "cpu"}
    return SegmentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clean(s3_volume, process_client, checkpoint, image, tmp_path_factory) -> np.ndarray:
    """The stored probabilities of a fault-free run: local input and output, checked equal to
    the S3 input through the proxy (no fault armed)."""
    from pipeline.segment import segment
    from tests.reliability.conftest import write_zarr

    root = tmp_path_factory.mktemp("clean")
    local = segment(write_zarr(root / "in.zarr", image, CHUNKS), root / "local.zarr", checkpoint, config(),
                    client=process_client)  # fmt: skip
    remote = segment(s3_volume, root / "remote.zarr", checkpoint, config(), client=process_client)
    assert local.ok and local.computed == 4 and remote.ok and remote.computed == 4
    probability = zarr.open_array(str(root / "local.zarr" / "probability"))[...]
    assert np.array_equal(zarr.open_array(str(root / "remote.zarr" / "probability"))[...], probability)
    return probability


@pytest.fixture()
def s3_output(moto_endpoint, s3_env, request) -> tuple[str, str]:
    """(bucket, s3://bucket/out.zarr): a fresh bucket per test, reached through the proxy."""
    bucket = "s3f-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    fs = _direct_fs(moto_endpoint)
    if fs.exists(bucket):
        fs.rm(bucket, recursive=True)
    fs.mkdir(bucket)
    return bucket, f"s3://{bucket}/out.zarr"


def stored(url: str) -> np.ndarray:
    """The probability array of an output (local path or s3:// URL through the proxy)."""
    return zarr.open_array(store=f"{url}/probability", mode="r")[...]


def test_workers_see_the_timeouts_from_the_environment(process_client) -> None:
    """The user-facing knob reaches the worker processes: fsspec's config and the S3 client's."""

    def seen() -> dict:
        import fsspec
        import fsspec.config

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        return {"conf": fsspec.config.conf.get("s3"), "timeouts": fs.config_kwargs}

    for info in process_client.run(seen).values():
        assert info["conf"]["config_kwargs"] == TIMEOUTS
        assert {k: info["timeouts"][k] for k in TIMEOUTS} == TIMEOUTS


def test_the_clients_network_errors_are_transient_for_the_retry_policy(s3_volume, s3_env, fault_proxy) -> None:
    """The exceptions s3fs raises (its own retries spent, botocore's off) for each fault, from
    real HTTP through the proxy: transient for `RetryPolicy`; a missing object is not."""
    import s3fs

    from pipeline.execute import RetryPolicy, error_text

    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # credentials, endpoint, timeouts: the environment
    key = f"{INPUT_BUCKET}/in.zarr/c/0/0/0"
    raised = {}
    for mode, method in (("reset", "GET"), ("drop", "PUT"), ("cut", "GET"), ("503", "GET")):
        fault_proxy.disarm()
        rule = fault_proxy.arm(f"/{key}", mode, budget=None, methods=(method,))
        with pytest.raises(Exception) as info:
            if method == "GET":
                fs.cat_file(key)
            else:
                fs.pipe_file(key, fs.cat_file(key))  # the same bytes: the volume stays as it was
        raised[mode] = (type(info.value).__name__, rule.hits, RetryPolicy.is_transient(info.value))
        if mode == "503":  # the S3 error code is only in the cause: the error text keeps it
            assert "(SlowDown)" in error_text(info.value), error_text(info.value)
    fault_proxy.disarm()
    with pytest.raises(FileNotFoundError) as missing:
        fs.cat_file(f"{INPUT_BUCKET}/no-such-object")
    assert not RetryPolicy.is_transient(missing.value)
    print(f"raised: {raised}")
    # (error type, faults until s3fs gave up, transient): resets and drops get one immediate
    # re-send from the HTTP client, cut bodies and 503s 5 tries from s3fs.
    assert raised == {
        "reset": ("EndpointConnectionError", 2, True), "drop": ("EndpointConnectionError", 2, True),
        "cut": ("ClientPayloadError", 5, True), "503": ("OSError", 5, True),
    }  # fmt: skip


def test_slow_responses_complete_bitwise_equal(s3_volume, clean, fault_proxy, process_client, checkpoint,
                                               tmp_path) -> None:  # fmt: skip
    """Every input chunk answered 0.5 s late (a third of the read timeout): no error, no retry."""
    from pipeline.segment import segment

    slow = fault_proxy.arm(f"/{INPUT_BUCKET}/in.zarr/c/", "slow", budget=None, delay=0.5, methods=("GET",))
    t0 = time.monotonic()
    result = segment(s3_volume, tmp_path / "out.zarr", checkpoint, config(), client=process_client)
    elapsed = time.monotonic() - t0
    assert result.ok and result.computed == 4, result.failed
    # 4 blocks × 4 chunks, plus the 8 chunks the client samples first (grey range, input
    # fingerprint) and again at the end (the input held still): each delayed once, none retried.
    assert slow.hits == 32 and slow.seen == 32, slow
    assert np.array_equal(stored(str(tmp_path / "out.zarr")), clean)
    print(f"slow: {slow}, {elapsed:.1f} s")


def test_read_timeouts_are_retried_and_the_run_completes(s3_volume, clean, fault_proxy, process_client, checkpoint,
                                                         tmp_path) -> None:  # fmt: skip
    """One input chunk stalls (no answer for 3 s) twice: each request times out after 1 s,
    is retried, and the run completes bitwise equal."""
    from pipeline.segment import segment

    chunk = f"/{INPUT_BUCKET}/in.zarr/c/1/0/1"
    stall = fault_proxy.arm(chunk, "stall", budget=2, delay=3 * READ_TIMEOUT_S, methods=("GET",))
    t0 = time.monotonic()
    result = segment(s3_volume, tmp_path / "out.zarr", checkpoint, config(), client=process_client)
    elapsed = time.monotonic() - t0
    assert result.ok and result.computed == 4, result.failed
    assert stall.hits == 2 and stall.seen == 3, stall  # 2 timed out, the third try answered
    assert elapsed >= 2 * READ_TIMEOUT_S  # the client did wait for its timeouts
    assert np.array_equal(stored(str(tmp_path / "out.zarr")), clean)
    print(f"timeouts: {stall}, {elapsed:.1f} s")


def test_connection_resets_are_retried_and_the_run_completes(s3_volume, clean, fault_proxy, process_client, checkpoint,
                                                             tmp_path) -> None:  # fmt: skip
    """One input chunk's GET reset before any response twice in a row (the HTTP client re-sends
    a request once at once when a reused connection drops), and another chunk's body cut in half
    and reset 5 times in a row (as often as s3fs tries on its own): both reach `RetryPolicy`."""
    from pipeline.segment import segment

    reset = fault_proxy.arm(f"/{INPUT_BUCKET}/in.zarr/c/2/0/1", "reset", budget=2, methods=("GET",))
    cut = fault_proxy.arm(f"/{INPUT_BUCKET}/in.zarr/c/3/1/1", "cut", budget=5, methods=("GET",))
    t0 = time.monotonic()
    result = segment(s3_volume, tmp_path / "out.zarr", checkpoint, config(), client=process_client)
    elapsed = time.monotonic() - t0
    assert result.ok and result.computed == 4, result.failed
    assert reset.hits == 2 and reset.seen == 3, reset
    assert cut.hits == 5 and cut.seen == 6, cut
    assert np.array_equal(stored(str(tmp_path / "out.zarr")), clean)
    print(f"resets: {reset}, cut: {cut}, {elapsed:.1f} s")


def test_transient_write_faults_are_retried_and_the_output_equals_a_clean_run(
    s3_volume, s3_output, clean, fault_proxy, process_client, checkpoint
) -> None:
    """Output on S3. Output chunk PUTs get: 6 × 503 (one more than s3fs tries), twice a lost
    reply after the PUT landed, twice a reset before it did, a stall past the read timeout."""
    from pipeline.ledger import Ledger
    from pipeline.segment import segment

    bucket, out = s3_output
    prefix = f"/{bucket}/out.zarr/{CHUNK}"
    rules = {
        "503": fault_proxy.arm(f"{prefix}/0/0/0", "503", budget=6, methods=("PUT",)),
        "drop": fault_proxy.arm(f"{prefix}/1/0/0", "drop", budget=2, methods=("PUT",)),
        "reset": fault_proxy.arm(f"{prefix}/2/0/0", "reset", budget=2, methods=("PUT",)),
        "stall": fault_proxy.arm(f"{prefix}/3/0/0", "stall", budget=1, delay=3 * READ_TIMEOUT_S, methods=("PUT",)),
    }
    t0 = time.monotonic()
    result = segment(s3_volume, out, checkpoint, config(), client=process_client)
    elapsed = time.monotonic() - t0
    assert result.ok and result.computed == 4, result.failed
    assert {k: r.hits for k, r in rules.items()} == {"503": 6, "drop": 2, "reset": 2, "stall": 1}, rules
    assert all(r.seen == r.hits + 1 for r in rules.values()), rules  # each chunk finally written once more
    fault_proxy.disarm()
    assert np.array_equal(stored(out), clean)
    summary = Ledger(out, 4).summary()
    assert summary.complete and summary.failed == ()
    print(f"writes: {list(rules.values())}, {elapsed:.1f} s")


def test_a_persistent_write_failure_is_bounded_not_done_and_resumable(
    s3_volume, s3_output, clean, fault_proxy, process_client, checkpoint, moto_endpoint
) -> None:
    """Block 2's output chunk always gets 503: block 2 fails after `retries` tries with the
    cause in the ledger and is not marked done; the other blocks are done; nothing is
    resubmitted; a resumed run without the fault computes only block 2 and the output equals
    a clean run."""
    from pipeline.ledger import Ledger
    from pipeline.segment import segment

    bucket, out = s3_output
    rule = fault_proxy.arm(f"/{bucket}/out.zarr/{CHUNK}/2/0/0", "503", budget=None, methods=("PUT",))
    t0 = time.monotonic()
    result = segment(s3_volume, out, checkpoint, config(retries=2), client=process_client)
    elapsed = time.monotonic() - t0
    assert [(f.block_id, f.stage, f.tries) for f in result.failed] == [(2, "write", 2)], result.failed
    assert result.computed == 3
    seen = rule.seen
    assert seen == 2 * 5, rule  # 2 pipeline tries × 5 s3fs attempts (botocore: 1), then it stops
    time.sleep(1.0)
    assert rule.seen == seen  # nothing resubmits the block in the background
    ledger = Ledger(out, 4)
    summary = ledger.summary()
    assert summary.done == 3 and summary.failed_ids == [2] and not ledger.is_done(2)
    assert "(SlowDown)" in summary.failed[0].error and "PutObject" in summary.failed[0].error, summary.failed
    assert "(SlowDown)" in result.failed[0].error
    direct = _direct_fs(moto_endpoint)
    chunks = sorted(k.rsplit(f"{CHUNK}/", 1)[1] for k in direct.find(f"{bucket}/out.zarr/{CHUNK}"))
    assert chunks == ["0/0/0", "1/0/0", "3/0/0"]  # block 2's chunk never landed
    assert [k for k in direct.find(f"{bucket}/out.zarr") if SECRET.encode() in direct.cat_file(k)] == []

    fault_proxy.disarm()
    t1 = time.monotonic()
    again = segment(s3_volume, out, checkpoint, config(resume=True), client=process_client)
    resumed = time.monotonic() - t1
    assert again.ok and again.computed == 1 and again.skipped == 3
    assert Ledger(out, 4).summary().complete
    assert np.array_equal(stored(out), clean)
    print(f"persistent write: {rule}, failed {result.failed[0].error!r}, {elapsed:.1f} s; resume {resumed:.1f} s")


def test_an_output_claim_whose_reply_was_lost_is_still_ours(s3_output, s3_env, fault_proxy, monkeypatch) -> None:
    """On S3 the output is claimed with a conditional PUT (If-None-Match: *). Its reply lost
    after the PUT landed, the re-send gets 412 for our own claim: the token in it says ours,
    so the run goes on; a second creator (its existence check raced ours) is still refused."""
    import pipeline.output as output
    from pipeline.plan import make_plan
    from unetcore.config import preset

    bucket, out = s3_output
    plan = make_plan(f"s3://{INPUT_BUCKET}/in.zarr", out, SHAPE, preset("tiny"), block_shape=BLOCK)
    drop = fault_proxy.arm(f"/{bucket}/out.zarr/{output.CLAIM}", "drop", budget=1, methods=("PUT",))
    created = output.create_output(plan)
    assert drop.hits == 1 and drop.seen == 2, drop  # landed, reply lost, re-sent: 412
    assert "emunet" in created.group.attrs and "probability" in created.group
    monkeypatch.setattr(output, "check_output", lambda *a, **k: Existing("none"))
    with pytest.raises(output.OutputExistsError, match="another run created"):
        output.create_output(plan)
