"""The flows in process against a temporary Prefect API: stages, artifacts, failures, retries.

Segmentation runs on a real Dask scheduler (one threaded worker with a GPU slot) and the
committed demo model; a 4×64×64 synthetic volume keeps each flow run to a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from flows._common import ClusterParams, is_transient, retry_on_transient
from flows.segment_volume import BlocksFailedError, SegmentVolumeParams, segment_volume
from tests.flows.conftest import BLOCK, DEMO_MODEL, artifacts_of

pytestmark = pytest.mark.usefixtures("prefect_api")


def params(volume, out: Path, scheduler: str, **kw) -> SegmentVolumeParams:
    return SegmentVolumeParams(
        input_url=volume[0], output_url=str(out), checkpoint=str(DEMO_MODEL), block_shape=BLOCK, blocks_per_task=2,
        cluster=ClusterParams(scheduler=scheduler), progress_interval_s=0.2, **kw,
    )  # fmt: skip


def test_segment_volume_writes_output_metrics_and_artifacts(volume, scheduler, tmp_path) -> None:
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    out = tmp_path / "seg.zarr"
    state = segment_volume(params(volume, out, scheduler, dtype="float32", ground_truth_url=volume[1]), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["result"]["computed"] == 4 and summary["ledger"] == {"done": 4, "total": 4, "complete": True}
    assert summary["plan"]["block_shape"] == list(BLOCK)
    ckpt = load_checkpoint(DEMO_MODEL)
    whole = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig()).predict_stack(volume[2])
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["probability"][:], whole, atol=1e-5)
    assert 0 <= summary["metrics"]["pixel_error"] < 0.2

    found = artifacts_of(state.state_details.flow_run_id)
    assert set(found) == {"segment-summary", "segment-metrics"}
    markdown = found["segment-summary"].data
    assert "xr.open_zarr" in markdown and str(out) in markdown and "4 written" in markdown
    rows = {row["metric"]: row["value"] for row in _table(found["segment-metrics"].data)}
    assert rows["pixel_error"] == pytest.approx(summary["metrics"]["pixel_error"], abs=1e-6)


def _table(data) -> list[dict]:
    import json

    return json.loads(data) if isinstance(data, str) else data


def test_failed_block_fails_the_flow_naming_it_and_resume_finishes(volume, scheduler, tmp_path) -> None:
    chunk = Path(volume[0]) / "c" / "2" / "0" / "0"  # z = 2: block 2 only (a 2D model reads no z context)
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd" * 8)
    out = tmp_path / "seg.zarr"
    try:
        state = segment_volume(params(volume, out, scheduler), return_state=True)
    finally:
        chunk.write_bytes(good)
    assert state.is_failed()
    with pytest.raises(BlocksFailedError, match=r"1 of 4 blocks not done: block 2 at offset \[2, 0, 0\], shape \[1, 64, 64\]"):
        state.result()
    assert "## Failed blocks" in artifacts_of(state.state_details.flow_run_id)["segment-summary"].data

    again = segment_volume(params(volume, out, scheduler, resume=True))
    assert again["result"]["computed"] == 1 and again["result"]["skipped"] == 3 and again["ledger"]["complete"]


def test_the_flows_metrics_equal_evaluate_of_the_stored_output(volume, scheduler, tmp_path, app, runner) -> None:
    """The flow scores the stored uint8 values as `emunet evaluate OUT.zarr GT` reads them
    (it converted them to float32 first until 2 Dec, which moved the warping error)."""
    import json

    out = tmp_path / "seg.zarr"
    summary = segment_volume(params(volume, out, scheduler, ground_truth_url=volume[1]))
    result = runner.invoke(app, ["evaluate", str(out), volume[1], "--json"])  # the group: its probability
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    for key in ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error"):
        assert summary["metrics"][key] == cli[key], key


def test_existing_output_is_refused_before_any_block_runs(volume, tmp_path) -> None:
    from pipeline.output import OutputExistsError

    out = tmp_path / "seg.zarr"
    out.mkdir()
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {"emunet": {"plan": {}}}}')
    with pytest.raises(OutputExistsError, match=r"--resume \(resume=True\) to continue it or --overwrite \(overwrite=True\)"):
        segment_volume(params(volume, out, "tcp://127.0.0.1:9"))  # never reached: no scheduler there
    (out / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')  # not ours: no flag offered
    with pytest.raises(OutputExistsError, match=r"emunet did not write .*choose another output path$"):
        segment_volume(params(volume, out, "tcp://127.0.0.1:9"))


def test_ground_truth_of_another_shape_is_refused(volume, tmp_path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "gt.tif", np.ones((64, 64), np.uint8))  # one slice: read as (1, 64, 64)
    with pytest.raises(ValueError, match=r"ground truth of the input's shape \(4, 64, 64\)"):
        segment_volume(params(volume, tmp_path / "seg.zarr", "tcp://127.0.0.1:9", ground_truth_url=str(tmp_path / "gt.tif")))


@pytest.mark.parametrize("created", [True, False], ids=["output made by the first try", "first try failed before"])
def test_transient_errors_are_retried_and_the_retry_resumes(volume, tmp_path, monkeypatch, created) -> None:
    """The retry resumes the output its flow run made; one that was there before the run (the
    first try failed before replacing it) is still replaced, as --overwrite asked."""
    import zarr

    import pipeline.segment
    from flows._common import flow_start
    from flows.segment_volume import run_blocks
    from pipeline.segment import SegmentResult

    calls = []
    zarr.open_group(str(tmp_path / "seg.zarr"), mode="w", zarr_format=3).attrs["emunet"] = {"created": "2020-01-01T00:00:00+00:00"}

    def flaky(input_url, output_url, checkpoint, config):
        calls.append(config)
        if len(calls) == 1:
            if created:
                zarr.open_group(str(output_url), mode="w", zarr_format=3).attrs["emunet"] = {"created": flow_start()}
            raise ConnectionError("scheduler went away")
        return SegmentResult(str(output_url), 4, computed=4)

    monkeypatch.setattr(pipeline.segment, "segment", flaky)
    p = params(volume, tmp_path / "seg.zarr", "tcp://127.0.0.1:9", overwrite=True)
    result = _in_flow(run_blocks.with_options(retries=2, retry_delay_seconds=0), p)
    assert result["computed"] == 4 and len(calls) == 2
    assert (calls[0].overwrite, calls[0].resume) == (True, False)
    expected = (False, True) if created else (True, False)  # never wipe what the first try wrote; never resume an older output
    assert (calls[1].overwrite, calls[1].resume) == expected


def test_permanent_errors_are_not_retried(volume, tmp_path, monkeypatch) -> None:
    import pipeline.segment
    from flows.segment_volume import run_blocks

    calls = []

    def broken(*args):
        calls.append(args)
        raise ValueError("Expected a legal tile. Got 570 instead.")

    monkeypatch.setattr(pipeline.segment, "segment", broken)
    with pytest.raises(ValueError, match="legal tile"):
        _in_flow(run_blocks.with_options(retries=3, retry_delay_seconds=0), params(volume, tmp_path / "s.zarr", "tcp://127.0.0.1:9"))
    assert len(calls) == 1


def _in_flow(task, p: SegmentVolumeParams):
    from prefect import flow

    from flows._common import flow_start

    @flow
    def one_stage() -> dict:
        return task(p, "0" * 64, 4, flow_start())

    return one_stage()


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (OSError(5, "Input/output error"), True),
        (FileNotFoundError("no such volume"), False),
        (PermissionError("denied"), False),
        (FileExistsError("output exists"), False),
        (ValueError("bad block shape"), False),
        (RuntimeError("CUDA error"), False),
    ],
)
def test_retry_condition_retries_only_transient_errors(exc, retry) -> None:
    from prefect.states import Failed

    assert is_transient(exc) is retry
    assert retry_on_transient(None, None, Failed(data=exc)) is retry


def test_params_defaults_are_the_pipelines_and_unset_fields_come_from_the_environment(monkeypatch) -> None:
    from pipeline.segment import SegmentConfig

    base = SegmentVolumeParams(input_url="in.zarr", output_url="out.zarr", checkpoint="m.safetensors")
    for name in ("batch_size", "dtype", "mask", "device", "resume", "overwrite", "pyramid_levels"):
        assert getattr(base, name) == getattr(SegmentConfig(), name), name
    monkeypatch.setenv("EMUNET_SEGMENT_BATCH_SIZE", "7")
    monkeypatch.setenv("EMUNET_SEGMENT_QUEUE_DEPTH", "3")
    assert base.segment_config().batch_size == 7 and base.segment_config().queue_depth == 3
    given = SegmentVolumeParams(input_url="in.zarr", output_url="out.zarr", checkpoint="m.safetensors", batch_size=2,
                                cluster={"workers": 3})  # fmt: skip
    config = given.segment_config()
    assert (config.batch_size, config.workers, config.scheduler, config.progress) == (2, 3, None, False)
    assert SegmentVolumeParams.from_segment_config("in.zarr", "out.zarr", "m", config).cluster.workers == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"resume": True, "overwrite": True}, "at most one of resume and overwrite"),
        ({"cluster": {"scheduler": "tcp://h:8786", "workers": 2}}, "Got both"),
        ({"dtype": "int8"}, "uint8"),
        ({"block_shape": [8, 512]}, "block_shape"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_params_are_refused_at_the_boundary(extra, message) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        SegmentVolumeParams(input_url="in.zarr", output_url="out.zarr", checkpoint="m.safetensors", **extra)


def test_precompute_weights_equals_the_whole_volume_maps(volume, tmp_path) -> None:
    from flows.precompute_weights import PrecomputeWeightsParams, precompute_weights
    from unetcore.weightmap import WeightMapConfig, weight_map_stack

    out = tmp_path / "w.zarr"
    state = precompute_weights(
        PrecomputeWeightsParams(labels_url=volume[1], output_url=str(out), instances=True, block_shape=(2, 32, 32)),
        return_state=True,
    )  # fmt: skip
    done = state.result()
    expected = weight_map_stack(volume[3], WeightMapConfig(), instances=True)
    np.testing.assert_allclose(zarr.open_group(str(out), mode="r")["weights"][:], expected, rtol=1e-6)
    assert done["num_blocks"] == 8 and done["statistics"]["max"] == pytest.approx(float(expected.max()))
    assert "w.zarr" in artifacts_of(state.state_details.flow_run_id)["weights-summary"].data


def train_params(volume, out: Path, **kw):
    from flows.train_unet import TrainUNetParams

    return TrainUNetParams(
        images=volume[0], labels=volume[1], out_dir=str(out), preset="tiny", model={"base_channels": 4},
        train={"steps": 3, "tile": 100, "val_every": 3, "warmup_steps": 1}, device="cpu", instances=True, val_slices="3",
        progress_interval_s=0.2, **kw,
    )  # fmt: skip


def test_train_unet_in_process_with_precomputed_weights(volume, tmp_path) -> None:
    from flows.precompute_weights import PrecomputeWeightsParams, precompute_weights
    from flows.train_unet import train_unet

    precompute_weights(PrecomputeWeightsParams(labels_url=volume[1], output_url=str(tmp_path / "w.zarr"), instances=True))
    state = train_unet(train_params(volume, tmp_path / "run", weights=str(tmp_path / "w.zarr")), return_state=True)
    result = state.result()
    assert result["steps"] == 3 and Path(result["best_checkpoint"]).is_file() and (tmp_path / "run" / "last.safetensors").is_file()
    assert 0 <= result["metrics"]["pixel_error"] <= 1
    found = artifacts_of(state.state_details.flow_run_id)
    assert {row["metric"] for row in _table(found["train-metrics"].data)} >= {"pixel_error", "rand_error", "warping_error"}
    from unetcore.checkpoint import read_header

    assert read_header(result["best_checkpoint"])["metadata"]["weights"] == {"precomputed": str(tmp_path / "w.zarr")}


def test_train_unet_on_a_dask_gpu_worker(volume, scheduler, tmp_path) -> None:
    from distributed import Client, get_task_stream

    from flows.train_unet import train_unet

    with Client(scheduler) as client, get_task_stream(client) as stream:
        result = train_unet(train_params(volume, tmp_path / "run", cluster=ClusterParams(scheduler=scheduler)))
    assert result["steps"] == 3 and Path(result["best_checkpoint"]).is_file() and "pixel_error" in result["metrics"]
    keys = [str(task["key"]) for task in stream.data]
    assert [k.rsplit("-", 1)[0] for k in keys] == ["emunet-run-training", "emunet-evaluate-checkpoint"]


def test_train_unet_refuses_mismatched_weights_before_training(volume, tmp_path) -> None:
    from flows.train_unet import train_unet

    wrong = tmp_path / "w.tif"
    import tifffile

    tifffile.imwrite(wrong, np.ones((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"weights of the images' shape \(4, 64, 64\)"):
        train_unet(train_params(volume, tmp_path / "run", weights=str(wrong)))
    assert not (tmp_path / "run").exists()


def test_train_unet_fine_tunes_from_init_and_writes_a_model_card(volume, tmp_path) -> None:
    """`init` (the flow's parameter of `emunet train --init`): weights and architecture of the
    checkpoint, the start validated first, the card beside the checkpoints; overrides refused."""
    from flows.train_unet import train_unet
    from unetcore.checkpoint import file_sha256, load_checkpoint

    first = train_unet(train_params(volume, tmp_path / "first"))
    start = first["best_checkpoint"]
    with pytest.raises(ValueError, match="expected no model overrides with init"):
        train_unet(train_params(volume, tmp_path / "refused", init=start))
    assert not (tmp_path / "refused").exists()
    params = train_params(volume, tmp_path / "tuned", init=start).model_copy(update={"preset": "paper", "model": {}})
    result = train_unet(params)
    best = load_checkpoint(result["best_checkpoint"])
    assert best.config == load_checkpoint(start).config
    assert best.metadata["init"]["file_sha256"] == file_sha256(start)
    lines = (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()
    assert '"step": 0, "validation"' in next(line for line in lines if "validation" in line)
    card = (tmp_path / "tuned" / "model-card.md").read_text()
    assert f"fine-tuned from `{start}`" in card and "| starting weights |" in card and "| pixel error" in card


def test_a_retry_never_takes_over_an_earlier_run(volume, tmp_path) -> None:
    """--out checked once, when the flow run begins: a retried fit-model resumes only the run
    this flow run began (before, a timed-out first attempt resumed, and replaced, an earlier run)."""
    from flows.train_unet import train_unet
    from pipeline.ownership import OutputExistsError

    (tmp_path / "first").mkdir()
    for name in ("last.safetensors", "best.safetensors", "metrics.jsonl"):  # an earlier run's (its bytes do not matter)
        (tmp_path / "first" / name).write_bytes(name.encode())
    before = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()}
    dead = ClusterParams(scheduler="tcp://127.0.0.1:9")  # would fail transiently, and be retried
    with pytest.raises(OutputExistsError, match="holds an earlier run"):
        train_unet(train_params(volume, tmp_path / "first", cluster=dead))
    assert {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()} == before


def test_retried_tasks_continue_only_outputs_their_flow_run_made(tmp_path) -> None:
    import zarr

    from flows._common import flow_start, made_since

    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    old.attrs["emunet"] = {"created": "2026-01-02T03:04:05+00:00"}  # before the flow run
    since = flow_start()
    new = zarr.open_group(str(tmp_path / "new.zarr"), mode="w", zarr_format=3)
    new.attrs["emunet"] = {"created": flow_start()}
    assert made_since(str(tmp_path / "new.zarr"), since) and not made_since(str(tmp_path / "old.zarr"), since)
    assert not made_since(str(tmp_path / "missing.zarr"), since) and not made_since(str(tmp_path / "new.zarr"), None)


def test_weights_for_training_are_a_finished_weight_map(tmp_path) -> None:
    """A stopped `emunet weights` run (missing blocks weigh 0), a probability map or an EM
    image given as --weights is refused before training; a finished map is read."""
    import zarr

    from flows._common import read_any, shape_of
    from unetcore.io import write_tiff

    def store(name: str, meta: dict) -> str:
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        group.create_array("weights", data=np.ones((2, 8, 8), np.float32))
        group.attrs["emunet"] = meta
        return str(tmp_path / name / "weights")

    stopped = store("stopped.zarr", {"weights": {}, "complete": False})
    for read in (shape_of, read_any):
        with pytest.raises(ValueError, match="expected a finished weight map, got .*stopped.zarr.*complete: false"):
            read(stopped, "weights")
    with pytest.raises(ValueError, match="got .*seg.zarr, an `emunet segment` output"):
        shape_of(store("seg.zarr", {"plan": {}}), "weights")
    probability = write_tiff(tmp_path / "p.tif", np.ones((2, 8, 8), np.float32), kind="probability")
    with pytest.raises(ValueError, match="a probability TIFF emunet wrote"):
        shape_of(str(probability), "weights")
    assert shape_of(store("done.zarr", {"weights": {}, "complete": True}), "weights") == (2, 8, 8)
    imported = zarr.open_group(str(tmp_path / "imported.zarr"), mode="w", zarr_format=3)  # the user's map, imported
    imported.create_array("0", data=np.ones((2, 8, 8), np.float32))
    imported.attrs["emunet_import"] = {"source": "w.tif"}
    assert shape_of(str(tmp_path / "imported.zarr" / "0"), "weights") == (2, 8, 8)
    assert read_any(str(write_tiff(tmp_path / "w.tif", np.ones((2, 8, 8), np.float32), kind="weights")), "weights").shape == (2, 8, 8)
