"""`emunet train --config`: data paths relative to the config file, --out to the current
directory, a missing data file refused with the path it resolved to (the real command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from emunet.cli.train import resolve_config_path
from tests.conftest import ROOT

TRAIN = ["--preset", "tiny", "--base-channels", "4", "--steps", "2", "--tile", "100", "--instances",
         "--no-flow", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_config_paths_are_relative_to_the_config_file_and_out_to_the_cwd(app, runner, tmp_path: Path, monkeypatch) -> None:
    configs, elsewhere = tmp_path / "project" / "configs", tmp_path / "elsewhere"
    (tmp_path / "project" / "data").mkdir(parents=True)
    configs.mkdir()
    elsewhere.mkdir()
    made = runner.invoke(app, ["synthetic", str(tmp_path / "project/data/img.tif"), str(tmp_path / "project/data/lab.tif"), "--shape", "2", "96", "96"])
    assert made.exit_code == 0, made.output
    (configs / "run.yaml").write_text("data: {images: ../data/img.tif, labels: ../data/lab.tif}\n")
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "--config", "../project/configs/run.yaml", "--out", "run", *TRAIN])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["steps"] == 2
    assert (elsewhere / "run" / "best.safetensors").is_file()  # --out: the current directory
    assert not (configs / "run").exists()



def test_the_weight_average_of_a_flag_or_config_reaches_the_kept_checkpoint_and_its_card(app, runner, tmp_path: Path, monkeypatch) -> None:
    made = runner.invoke(app, ["synthetic", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "--shape", "3", "96", "96"])
    assert made.exit_code == 0, made.output
    (tmp_path / "ema.yaml").write_text("data: {images: img.tif, labels: lab.tif, train_slices: '0:2', val_slices: '2:3'}\n"
                                       "train: {ema_decay: 0.5, val_every: 2}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", "ema.yaml", "--ema-decay", "0.9", "--out", "run", *TRAIN])  # the flag wins
    assert result.exit_code == 0, result.output
    from unetcore.checkpoint import load_checkpoint

    best, last = (load_checkpoint(tmp_path / "run" / f"{kind}.safetensors") for kind in ("best", "last"))
    assert best.metadata["train_config"]["ema_decay"] == 0.9 and "ema.updates" in last.extra
    assert "moving average (decay 0.9)" in (tmp_path / "run" / "model-card.md").read_text()

def test_a_run_never_writes_over_its_inputs_or_an_earlier_run(app, runner, tmp_path: Path, monkeypatch) -> None:
    """--out holding the --init checkpoint (or the data) is refused; so is an --out with an
    earlier run's checkpoints and log, unless --resume continues it."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["synthetic", "img.tif", "lab.tif", "--shape", "3", "96", "96"]).exit_code == 0
    data = ["--images", "img.tif", "--labels", "lab.tif"]
    assert runner.invoke(app, ["train", *data, "--out", "first", *TRAIN]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model-card.md").write_text("my hand-written card")
    (tmp_path / "mine" / "best.json").write_text('{"mine": 1}')
    (tmp_path / "notes.txt").write_text("notes")
    for args, says in [
        (["--init", "first/best.safetensors", "--out", "first"], "which contains the input first/best.safetensors"),
        (["--out", "first"], "holds an earlier run or files a run would replace (last.safetensors, best.safetensors, "
                             "last.json, best.json, metrics.jsonl, model-card.md); pass --resume"),
        (["--out", "."], "which contains the input img.tif"),
        (["--out", "mine"], "files a run would replace (best.json, model-card.md)"),  # the user's own card
        (["--out", "notes.txt"], "expected --out to be a folder, got a file"),
    ]:
        result = runner.invoke(app, ["train", *data, *args, *TRAIN])
        assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "first").iterdir()} == before  # nothing changed
    assert (tmp_path / "mine" / "model-card.md").read_text() == "my hand-written card"
    assert runner.invoke(app, ["train", *data, "--out", "first", "--resume", *TRAIN]).exit_code == 0


def test_a_missing_data_file_names_the_resolved_path_and_writes_nothing(app, runner, tmp_path: Path, monkeypatch) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "bad.yaml").write_text("data: {images: ../data/missing.tif, labels: ../data/lab.tif}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", "configs/bad.yaml", "--out", "run", *TRAIN])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in text
    assert f"at {tmp_path / 'data' / 'missing.tif'}, got no such file" in text and "data.images" in text
    assert "relative to the config file's folder" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_a_flag_replaces_a_config_path_relative_to_the_cwd(app, runner, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text("data: {images: nowhere.tif, labels: nowhere.tif}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--config", "configs/c.yaml", "--images", "here.tif", "--out", "run", *TRAIN])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "data.labels" in text and "data.images" not in text  # --images is not resolved


def test_hdf5_dataset_and_url_forms(tmp_path: Path) -> None:
    (tmp_path / "v.h5").write_bytes(b"")
    assert resolve_config_path("v.h5:/raw", tmp_path, "images", tmp_path / "c.yaml") == f"{tmp_path / 'v.h5'}:/raw"
    assert resolve_config_path("s3://bucket/v.zarr", tmp_path, "images", tmp_path / "c.yaml") == "s3://bucket/v.zarr"


@pytest.mark.parametrize(
    ("config", "expected"),
    [("isbi2012-cpu.yaml", ROOT.parent / "shared" / "data" / "isbi2012"), ("demo-synthetic.yaml", ROOT / "runs" / "demo-data")],
)
def test_the_shipped_configs_point_where_their_comments_say(config: str, expected: Path) -> None:
    """Resolved against configs/, the data paths land where the model cards say (the files
    themselves need the data or `make demo`: checked by resolving, not by training)."""
    data = yaml.safe_load((ROOT / "configs" / config).read_text())["data"]
    for key in ("images", "labels"):
        resolved = ((ROOT / "configs") / data[key]).resolve()
        assert resolved.parent == expected.resolve(), (key, resolved)
    text = (ROOT / "configs" / config).read_text()
    assert "Expected time" in text and "relative to this file's folder" in text


def test_the_isbi_config_finds_the_real_data_from_any_directory(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "isbi2012-cpu.yaml"
    data = yaml.safe_load(config.read_text())["data"]
    for key in ("images", "labels"):
        assert Path(resolve_config_path(data[key], config.parent, key, config)).is_file()


def test_fine_tuning_the_isbi_model_on_fibsem_improves_it_there(app, runner, shared_data: Path, tmp_path: Path) -> None:
    """`emunet train --init`: the shipped ISBI 2012 model (ssTEM), fine-tuned on six FIB-SEM
    slices (membranes = the instance labels' 0-boundaries), scores better on six other slices
    of that volume than it did before; the run's card states both. About a minute on CPU."""
    fib = shared_data / "gala-fibsem"
    out = tmp_path / "fibsem"
    args = ["train", "--init", str(ROOT / "models" / "isbi2012.safetensors"), "--no-flow", "--no-progress",
            "--images", f"{fib / 'train-image.h5'}:/stack", "--labels", f"{fib / 'train-gt.lzf.h5'}:/stack", "--instances",
            "--train-slices", "0:6", "--val-slices", "44:50", "--tile", "252", "--steps", "60", "--lr", "0.003",
            "--val-every", "30", "--select-metric", "rand_error_2012", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    validations = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"validation"' in line]
    start = validations[0]
    assert start["step"] == 0
    from unetcore.checkpoint import load_checkpoint

    best = load_checkpoint(out / "best.safetensors").metadata
    # The start scores Rand error 2012 ≈ 0.64 there; 60 steps bring it to ≈ 0.59 (0.02 is the margin asked).
    assert best["step"] > 0 and best["best"] < start["validation"]["rand_error_2012"] - 0.02
    card = (out / "model-card.md").read_text()
    assert "fine-tuned from" in card and "| Rand error 2012 (swept) |" in card


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_its_recipe(config: Path) -> None:
    """A config in `configs/` that no longer matches the recipe's fields (a renamed or
    removed option), an illegal tile or a data path gone wrong would fail only when someone
    runs it, an hour into a study."""
    from emunet.cli.train import load_config_file
    from flows.unet_training import TrainSpec
    from unetcore import geometry

    cfg = load_config_file(config)
    model = dict(cfg.get("model") or {})
    spec = TrainSpec(
        images="images.tif", labels="labels.tif", preset=model.pop("preset", "paper"), model=model,
        train=cfg.get("train", {}), augment=cfg.get("augment", {}), weight_map=cfg.get("weights", {}),
    )  # fmt: skip
    model_config, train_config, weights = spec.configs()
    assert train_config.steps > 0 and weights.w0 > 0
    assert model_config.padding == "valid"  # every shipped recipe is the paper's valid U-Net
    assert geometry.is_legal(model_config, train_config.tile), f"tile {train_config.tile} is not legal for the model"
    data = cfg["data"]
    for key in ("images", "labels"):  # the real data beside the repository (the demo's is made by `emunet synthetic`)
        if "shared/data/" in data[key] and (ROOT.parent / "shared" / "data").is_dir():
            assert Path(resolve_config_path(data[key], config.parent, key, config)).is_file()



def test_a_3d_model_refuses_a_slice_split_it_would_ignore(app, runner, tmp_path: Path, monkeypatch) -> None:
    """Slices of a volume are not samples of a 3D model: the split was ignored (validation
    slices trained on, no validation, a card claiming both); now it is refused."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["synthetic", "v.tif", "l.tif", "--shape", "6", "64", "64", "--volume"]).exit_code == 0
    result = runner.invoke(app, ["train", "--images", "v.tif", "--labels", "l.tif", "--preset", "aniso3d", "--3d",
                                 "--val-slices", "4:6", "--out", "r3", "--no-flow", "--steps", "1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "expected no slice split with a 3D model, got --val-slices 4:6" in text, result.output
    assert not (tmp_path / "r3").exists()
