"""``--resume`` refuses, before any block runs, whatever would change the new blocks' numbers
(checkpoint, device class and precision, tile, input level, grey range, tta, compile) or the output's
layout (output dtype); ``allow_mismatch`` (``--allow-mismatch``) resumes despite a setting,
never despite the layout, and the provenance records it.

One interrupted output (6 of 8 blocks done) is made per module on a real LocalCluster; each
test resumes a copy of it. The input is an OME-Zarr with two levels of one shape, so that
the input level can differ alone.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.cluster import ClusterConfig, local_cluster
from pipeline.ledger import Ledger
from pipeline.output import PlanMismatchError
from pipeline.resume import precision, predict_settings
from pipeline.segment import SegmentConfig, segment
from tests.conftest import save_tiny_checkpoint
from tests.pipeline.conftest import write_ome

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo-synthetic.safetensors"
SHAPE, BLOCK = (2, 48, 48), (1, 24, 24)  # 8 blocks
AUTO_TILE = [132, 132]  # the demo model's tile for a 24 × 24 block


@pytest.fixture(scope="module")
def scheduler() -> str:
    cluster, _, _ = local_cluster(ClusterConfig(workers=1, torch_threads=1))
    with cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    from unetcore.synthetic import synthetic_em_volume

    path = tmp_path_factory.mktemp("vol") / "in.zarr"
    write_ome(path, [synthetic_em_volume(SHAPE, seed=s).image for s in (1, 2)], (50.0, 4.0, 4.0))
    return path


def config(scheduler: str, **kw) -> SegmentConfig:
    return SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False, torch_threads=1, **kw)


@pytest.fixture(scope="module")
def interrupted(volume, scheduler, tmp_path_factory) -> Path:
    """An output whose run stopped after 6 of its 8 blocks."""
    out = tmp_path_factory.mktemp("first") / "out.zarr"
    assert segment(volume, out, DEMO_MODEL, config(scheduler)).ok
    for block_id in (3, 7):  # as if the run had stopped before them (the ledger's own way: roll-up first)
        Ledger(str(out), 8).unmark_done(block_id)
    return out


@pytest.fixture()
def out(interrupted, tmp_path) -> Path:
    copy = tmp_path / "out.zarr"
    shutil.copytree(interrupted, copy)
    return copy


def state(out: Path) -> tuple[int, np.ndarray]:
    return Ledger(str(out), 8).summary().done, zarr.open_group(str(out), mode="r")["probability"][:]


def assert_untouched(out: Path, before: tuple[int, np.ndarray]) -> None:
    done, data = state(out)
    assert done == before[0] == 6, "no block may run before the refusal"
    np.testing.assert_array_equal(data, before[1])


def test_the_provenance_records_how_blocks_were_computed(interrupted) -> None:
    meta = zarr.open_group(str(interrupted), mode="r").attrs["emunet"]
    assert meta["predict"] == {"tta": False, "compile": False, "device": "cpu", "precision": "float32", "tile": AUTO_TILE}
    assert meta["plan"]["input_level"] == 0 and meta["input"]["grey_range"] == [0.0, 255.0]


@pytest.mark.parametrize(
    "change, says",
    [
        ({"tile_shape": (124, 124)}, "tile: stored [132, 132], now [124, 124]"),
        ({"input_level": 1}, "input_level: stored 0, now 1"),
        ({"grey_range": (10.0, 250.0)}, "grey range: stored [0.0, 255.0], now [10.0, 250.0]"),
        ({"tta": True}, "tta: stored False, now True"),
        ({"compile": True}, "compile: stored False, now True"),
        ({"checkpoint": "other"}, "checkpoint_sha256: stored '"),
    ],
    ids=["tile", "input level", "grey range", "tta", "compile", "checkpoint"],
)
def test_a_setting_mismatch_is_refused_before_any_block(volume, scheduler, out, tmp_path, change, says) -> None:
    checkpoint = DEMO_MODEL
    if change.pop("checkpoint", None):
        checkpoint = save_tiny_checkpoint(tmp_path / "other.safetensors", seed=3)
    before = state(out)
    with pytest.raises(PlanMismatchError, match="expected to resume") as err:
        segment(volume, out, checkpoint, config(scheduler, resume=True, **change))
    message = str(err.value)
    assert says in message and "--allow-mismatch" in message and "--overwrite" in message, message
    assert_untouched(out, before)


def test_device_class_and_precision_are_compared_once_the_workers_answer(volume, scheduler, out) -> None:
    """An output started on GPU workers (bf16 autocast), resumed on CPU workers ("auto" on a
    --scheduler: only the workers know their device)."""
    group = zarr.open_group(str(out), mode="r+")
    meta = dict(group.attrs["emunet"])
    meta["predict"] = {**meta["predict"], "device": "cuda", "precision": "bfloat16 autocast"}
    group.attrs["emunet"] = meta
    before = state(out)
    with pytest.raises(PlanMismatchError) as err:
        segment(volume, out, DEMO_MODEL, config(scheduler, resume=True))
    message = str(err.value)
    assert "device: stored 'cuda', now 'cpu'; precision: stored 'bfloat16 autocast', now 'float32'" in message
    assert "--device cuda" in message and "--allow-mismatch" in message, message
    assert_untouched(out, before)


def test_a_resume_without_a_block_shape_keeps_the_outputs_own(volume, scheduler, out) -> None:
    """The output's blocks, not today's default for these workers (8 × 512 × 512 here)."""
    plain = SegmentConfig(scheduler=scheduler, progress=False, torch_threads=1, resume=True)
    result = segment(volume, out, DEMO_MODEL, plain)
    assert result.ok and (result.computed, result.skipped) == (2, 6)
    assert zarr.open_group(str(out), mode="r").attrs["emunet"]["plan"]["block_shape"] == list(BLOCK)


@pytest.mark.parametrize("spelling", ["symlink", "file://"])
def test_the_same_input_spelt_another_way_resumes(volume, scheduler, out, tmp_path, spelling) -> None:
    """A symlink to the input, or its file:// URL, is the same input: no mismatch."""
    if spelling == "symlink":
        same = tmp_path / "link.zarr"
        same.symlink_to(volume, target_is_directory=True)
    else:
        same = f"file://{volume}"
    result = segment(same, out, DEMO_MODEL, config(scheduler, resume=True))
    assert result.ok and (result.computed, result.skipped) == (2, 6)


def test_the_layout_is_never_overridden(volume, scheduler, out) -> None:
    before = state(out)
    with pytest.raises(PlanMismatchError, match="output dtype: stored 'uint8', now 'float32'") as err:
        segment(volume, out, DEMO_MODEL, config(scheduler, resume=True, allow_mismatch=True, dtype="float32"))
    assert "output dtype cannot change on resume" in str(err.value)
    assert_untouched(out, before)


def test_allow_mismatch_resumes_and_the_provenance_says_so(volume, scheduler, out) -> None:
    result = segment(volume, out, DEMO_MODEL, config(scheduler, resume=True, allow_mismatch=True, tile_shape=(124, 124)))
    assert result.ok and (result.computed, result.skipped) == (2, 6)
    meta = zarr.open_group(str(out), mode="r").attrs["emunet"]
    assert meta["predict"]["tile"] == AUTO_TILE, "the provenance keeps what the output was started with"
    (entry,) = meta["resumed_with_differences"]
    assert entry["differences"] == [{"what": "tile", "stored": AUTO_TILE, "now": [124, 124]}] and entry["at"]


def test_the_command_names_the_mismatch_and_the_flag(app, runner, volume, scheduler, out, monkeypatch) -> None:
    monkeypatch.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")
    cmd = ["segment", str(volume), str(out), "--model", str(DEMO_MODEL), "--block", *map(str, BLOCK), "--scheduler", scheduler,
           "--no-flow", "--resume", "--tile", "124", "--json"]  # fmt: skip
    refused = runner.invoke(app, cmd)
    flat = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "tile: stored [132, 132], now [124, 124]" in flat, refused.output
    assert "--tile 132,132" in flat and "--allow-mismatch" in flat, refused.output
    resumed = runner.invoke(app, [*cmd, "--allow-mismatch"])
    assert resumed.exit_code == 0, resumed.output
    assert (json.loads(resumed.stdout)["computed"], Ledger(str(out), 8).summary().done) == (2, 8)


def test_settings_and_environment() -> None:
    assert precision("cuda", True) == "bfloat16 autocast" and precision("cuda", False) == precision("cpu", True) == "float32"
    assert predict_settings(tta=True, devices=["cuda:0", "cuda:1"], amp=True, tile=(572, 572)) == {
        "tta": True, "compile": False, "device": "cuda", "precision": "bfloat16 autocast", "tile": [572, 572]}  # fmt: skip
    assert predict_settings(tta=False, devices=["cpu", "cuda:0"], amp=True)["precision"] == "bfloat16 autocast+float32"
    assert predict_settings(tta=False) == {"tta": False, "compile": False}, "what is not known is left out (and not compared)"
    assert predict_settings(tta=False, compile=True)["compile"] is True
    assert SegmentConfig.from_env({"EMUNET_SEGMENT_ALLOW_MISMATCH": "1"}).allow_mismatch is True
    assert dataclasses.replace(SegmentConfig(), allow_mismatch=True).allow_mismatch
