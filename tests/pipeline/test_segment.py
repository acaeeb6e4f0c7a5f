"""`pipeline.segment.segment` end to end on a real LocalCluster (2 worker processes).

The session's cluster (`local_scheduler` in tests/conftest.py), reached through its
scheduler address (the "existing scheduler" path); a tiny model and a 6×96×80 synthetic
volume keep each run under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.ledger import Ledger
from pipeline.output import OutputExistsError
from pipeline.segment import SegmentConfig, SegmentResult, describe_result, segment
from pipeline.worker import CheckpointMismatchError
from tests.conftest import save_tiny_checkpoint

SHAPE = (6, 96, 80)
BLOCK = (2, 48, 40)  # a 3 × 2 × 2 grid: 12 blocks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=0)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Input chunks of one z slice, so one corrupt chunk breaks exactly one z-slab of blocks."""
    from unetcore.synthetic import synthetic_em_volume

    image = synthetic_em_volume(SHAPE, seed=3).image
    path = tmp_path_factory.mktemp("vol") / "in.zarr"
    zarr.create_array(str(path), shape=SHAPE, chunks=(1, 96, 80), dtype="uint8")[:] = image
    return path, image


@pytest.fixture(scope="module")
def expected(checkpoint: Path, volume) -> np.ndarray:
    """The whole-volume prediction in this process (no blocks, no Dask)."""
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    ckpt = load_checkpoint(checkpoint)
    return TilePredictor(ckpt.model, ckpt.normalization, PredictConfig()).predict_stack(volume[1])


@pytest.fixture(scope="module")
def scheduler(local_scheduler: str) -> str:
    """The session's 2-worker cluster (tests/conftest.py)."""
    return local_scheduler


def run(volume, out: Path, checkpoint: Path, scheduler: str, **kw) -> SegmentResult:
    kw = {"blocks_per_task": 2, **kw}
    config = SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False, torch_threads=1, **kw)
    return segment(volume[0], out, checkpoint, config)


def stored(out: Path) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")["probability"][:]


def test_blocked_output_equals_whole_volume_prediction(volume, checkpoint, scheduler, expected, tmp_path) -> None:
    from distributed import Client

    def loads() -> int:
        import pipeline.worker

        return pipeline.worker.LOADS

    with Client(scheduler) as client:  # the session's cluster: its workers may have loaded models before
        before = client.run(loads)
    out = tmp_path / "out.zarr"
    result = run(volume, out, checkpoint, scheduler, dtype="float32")
    assert result.ok and (result.computed, result.skipped, result.total_blocks) == (12, 0, 12)
    assert result.voxels == np.prod(SHAPE) and result.voxels_per_second > 0
    assert result.cluster == "scheduler" and result.slots == 2
    new = {w: n - before.get(w, 0) for w, n in result.model_loads.items()}  # this module's checkpoint: new to the cluster
    assert set(new.values()) == {1}, f"the model must load once per worker: {new}"
    assert set(result.stage_seconds) == {"read", "compute", "write", "wall"}
    np.testing.assert_allclose(stored(out), expected, atol=1e-5)
    assert (out / "ledger" / "rollup" / "0.json").is_file()  # rolled up by the run: status reads one object
    assert Ledger(str(out), 12).summary().complete
    assert "12 blocks written" in describe_result(result)


@pytest.mark.parametrize("depth", [0, 1], ids=["serial", "overlapped"])
def test_both_stage_modes_write_the_same_output(depth, volume, checkpoint, scheduler, expected, tmp_path) -> None:
    """queue_depth=0: each task runs its blocks one after another, no stage threads (what
    blocks this small get by default); 1: read, compute and write overlap in three threads."""
    out = tmp_path / "out.zarr"
    result = run(volume, out, checkpoint, scheduler, dtype="float32", queue_depth=depth)
    assert result.ok and result.computed == 12
    np.testing.assert_allclose(stored(out), expected, atol=1e-5)
    assert Ledger(str(out), 12).summary().complete


def test_failing_block_is_reported_and_resume_finishes_the_rest(volume, checkpoint, scheduler, expected, tmp_path) -> None:
    chunk = volume[0] / "c" / "3" / "0" / "0"  # z = 3: the read regions of z-slab 1
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)
    out = tmp_path / "out.zarr"
    try:
        first = run(volume, out, checkpoint, scheduler, dtype="float32")
    finally:
        chunk.write_bytes(good)
    failed = {f.block_id: f for f in first.failed}
    assert first.computed == 8 and sorted(failed) == [4, 5, 6, 7]
    assert all(f.stage == "read" and f.tries == 1 and "decompression" in f.error for f in failed.values())
    assert failed[5].where["write_roi"] == {"offset": [2, 0, 40], "shape": [2, 48, 40]}
    assert not (out / "ledger" / "rollup" / "0.json").exists()  # an incomplete group is never rolled up
    summary = Ledger(str(out), 12).summary()
    assert summary.done == 8 and summary.failed_ids == [4, 5, 6, 7]

    second = run(volume, out, checkpoint, scheduler, dtype="float32", resume=True)
    assert second.ok and (second.computed, second.skipped) == (4, 8)
    np.testing.assert_allclose(stored(out), expected, atol=1e-5)
    assert Ledger(str(out), 12).summary().complete


def test_uint8_mask_and_pyramid(volume, checkpoint, scheduler, expected, tmp_path) -> None:
    out = tmp_path / "out.zarr"
    result = run(volume, out, checkpoint, scheduler, dtype="uint8", mask=True, pyramid_levels=1, max_in_flight=2, blocks_per_task=8)
    assert result.ok and result.peak_in_flight <= 2
    assert result.blocks_per_task == 3, "12 blocks on 2 slots: groups shrink so both slots get work"
    group = zarr.open_group(str(out), mode="r")
    assert group["probability"].dtype == np.uint8
    np.testing.assert_allclose(group["probability"][:] / 255.0, expected, atol=0.5 / 255 + 1e-6)
    # Blockwise and whole-volume p agree to ~1e-5, not bitwise on every CPU: voxels within that
    # of the threshold may fall either side of it, so the mask is compared everywhere else.
    clear = np.abs(expected - 0.5) > 1e-4
    np.testing.assert_array_equal(group["mask"][:][clear], (expected >= 0.5).astype(np.uint8)[clear])
    assert clear.mean() > 0.99
    assert group["pyramid/probability/1"].shape == (6, 48, 40)


def test_existing_output_needs_resume_or_overwrite(volume, checkpoint, scheduler, tmp_path) -> None:
    out = tmp_path / "out.zarr"
    run(volume, out, checkpoint, scheduler)
    with pytest.raises(OutputExistsError, match="--resume"):
        run(volume, out, checkpoint, scheduler)
    again = run(volume, out, checkpoint, scheduler, resume=True)
    assert (again.computed, again.skipped) == (0, 12)
    assert run(volume, out, checkpoint, scheduler, overwrite=True).computed == 12


def test_checkpoint_hash_mismatch_fails_before_any_block(volume, checkpoint, scheduler, tmp_path) -> None:
    with pytest.raises(CheckpointMismatchError, match="SHA-256"):
        run(volume, tmp_path / "out.zarr", checkpoint, scheduler, checkpoint_sha256="f" * 64)
    assert not (tmp_path / "out.zarr").exists(), "the output is created only once the workers hold the model"
    assert run(volume, tmp_path / "out.zarr", checkpoint, scheduler).ok  # the cluster is still usable


def test_config_validation_and_environment() -> None:
    with pytest.raises(ValueError, match="dtype"):
        SegmentConfig(dtype="int16")
    with pytest.raises(ValueError, match="resume and overwrite"):
        SegmentConfig(resume=True, overwrite=True)
    with pytest.raises(ValueError, match="either workers"):
        SegmentConfig(workers=2, scheduler="tcp://127.0.0.1:8786")
    env = {"EMUNET_SEGMENT_BLOCK_SHAPE": "8,256,256", "EMUNET_SEGMENT_MASK": "true", "EMUNET_SEGMENT_WORKERS": "3"}
    config = SegmentConfig.from_env(env, batch_size=2)
    assert (config.block_shape, config.mask, config.workers, config.batch_size) == ((8, 256, 256), True, 3, 2)
    with pytest.raises(ValueError, match="EMUNET_SEGMENT_BATCH_SIZE"):
        SegmentConfig.from_env({"EMUNET_SEGMENT_BATCH_SIZE": "four"})


def test_bad_tile_and_bad_weights_are_refused_before_any_output(volume, checkpoint, scheduler, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from unetcore.checkpoint import CheckpointError, content_hash, read_header
    from unetcore.geometry import IllegalTileSizeError

    out = tmp_path / "out.zarr"
    with pytest.raises(IllegalTileSizeError, match="nearest legal sizes"):
        run(volume, out, checkpoint, scheduler, tile_shape=(50, 50))
    with pytest.raises(ValueError, match="tile of 2 sizes"):
        run(volume, out, checkpoint, scheduler, tile_shape=(2, 108, 108))
    # Weights that do not fit the checkpoint's own config (a header edited by hand, say).
    header = read_header(checkpoint)
    header["model_config"]["base_channels"] = 8
    tensors = load_file(str(checkpoint))
    header["content_sha256"] = content_hash(tensors, header["model_config"], header["normalization"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"emunet": json.dumps(header)})
    with pytest.raises(CheckpointError, match="mismatch"):
        run(volume, out, bad, scheduler)
    assert not out.exists(), "nothing may be written before the run is refused"


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 300), size=st.integers(1, 70), extra=st.integers(0, 5))
def test_groups_are_consecutive_and_even(total, size, extra) -> None:
    """Every id once, in order, at most `size` per group; the expected `total` in
    ceil(total / size) groups whose sizes differ by one at most (ids beyond it still grouped)."""
    from pipeline.segment import _groups

    groups = list(_groups(iter(range(total + extra)), size, total))
    assert [i for g in groups for i in g] == list(range(total + extra))
    assert all(1 <= len(g) <= size for g in groups)
    head = groups[: -(-total // size)] if total else []
    assert sum(map(len, head)) == total and (not head or max(map(len, head)) - min(map(len, head)) <= 1)


def test_an_input_replaced_during_the_run_leaves_no_block_done(volume, checkpoint, scheduler, tmp_path, monkeypatch) -> None:
    """`emunet import other.tif in.zarr --overwrite` while a run reads in.zarr: its blocks mix
    old and new data. The run ends in an error naming the change, with no block marked done
    (so `status` and `--resume` cannot take the mix for a result)."""
    import shutil

    import pipeline.segment as seg
    from pipeline.resume import PlanMismatchError

    inp = tmp_path / "in.zarr"
    shutil.copytree(volume[0], inp)
    real_run = seg._run

    def run_then_replace(*args, **kw):
        real_run(*args, **kw)  # every block written…
        zarr.open_array(str(inp), mode="r+")[:] = 255 - volume[1]  # …while the input was replaced

    monkeypatch.setattr(seg, "_run", run_then_replace)
    out = tmp_path / "out.zarr"
    with pytest.raises(PlanMismatchError, match=r"changed during the run \(input values of chunk\(s\) .*segment it again with --overwrite"):
        run((inp, volume[1]), out, checkpoint, scheduler)
    assert Ledger(str(out), 12).summary().done == 0
    monkeypatch.setattr(seg, "_run", real_run)
    assert run((inp, volume[1]), out, checkpoint, scheduler, overwrite=True).computed == 12


def test_an_input_that_cannot_be_read_again_keeps_the_blocks(volume, checkpoint, scheduler, tmp_path, monkeypatch, caplog) -> None:
    """A failed read at the final check (throttling, a network blip) proves no change: the run's
    blocks stay done, with a warning, instead of a finished run thrown away."""
    import shutil

    import pipeline.segment as seg

    inp = tmp_path / "in.zarr"
    shutil.copytree(volume[0], inp)
    real_run = seg._run

    def run_then_hide(*args, **kw):
        real_run(*args, **kw)
        (inp / "zarr.json").rename(inp / "zarr.json.away")  # unreadable for a moment

    monkeypatch.setattr(seg, "_run", run_then_hide)
    result = run((inp, volume[1]), tmp_path / "out.zarr", checkpoint, scheduler)
    assert result.ok and Ledger(str(tmp_path / "out.zarr"), 12).summary().done == 12
    assert "could not read the input" in caplog.text and "the blocks stay done" in caplog.text
