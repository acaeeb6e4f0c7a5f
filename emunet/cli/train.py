"""`emunet train`: the paper's recipe from a config file and/or flags.

A config file (YAML or JSON) may hold the sections ``data``, ``model``, ``train``,
``augment`` and ``weights``; flags given on the command line override it. Example::

    data: {images: train-volume.tif, labels: train-labels.tif, train_slices: "0:16", val_slices: "16:20"}
    model: {preset: cpu}
    train: {steps: 8000, tile: 428, lr: 0.01, seed: 0}
    weights: {w0: 10, sigma: 5, class_balance: frequency}

Fine-tuning a shipped model on a lab's own labelled slices: ``--init CKPT`` (or ``model:
{init: CKPT}`` in the config file, relative to it) starts from the checkpoint's weights and
architecture; the initial weights are validated first, and OUT/model-card.md records the
metrics of the selected checkpoint beside them::

    emunet train --init models/isbi2012.safetensors --images own.tif --labels own-labels.tif \
        --val-slices 8:10 --select-metric rand_error --steps 500 --out runs/own

The merged configuration becomes a `flows.unet_training.TrainSpec`. By default it runs as the
Prefect flow `train-unet` (`flows/train_unet.py`: run log, retries, a metrics artifact; on a
Dask GPU worker with --scheduler/--workers); --no-flow trains in this process without Prefect.
Images, labels and precomputed weights (--weights) may be TIFF, HDF5 or Zarr.

Paths: the config file's data paths (``images``, ``labels``, ``weights``) are relative to
the config file's folder, so ``emunet train --config configs/isbi2012-cpu.yaml`` works from
any directory; paths given as flags (``--images``, ``--out``, …) are relative to the current
directory, as usual on a command line. A missing data file is refused before training, with
the path it resolved to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emunet.cli.common import console, echo_json, user_errors


DATA_PATH_KEYS = ("images", "labels", "weights")  # model.init is resolved the same way


def resolve_config_path(value: Any, folder: Path, key: str, config: Path, section: str = "data") -> str:
    """A data path of a config file, relative to the file's ``folder`` (URLs unchanged).

    ``file.h5:/dataset`` keeps its dataset part. A local path that does not exist is an
    error that names the config entry and the path it resolved to.
    """
    from unetcore.io import split_hdf5

    text = str(value)
    if "://" in text:
        return text
    path, dataset = split_hdf5(text)
    given = Path(path).expanduser()
    resolved = given if given.is_absolute() else (folder / given).resolve()
    if not resolved.exists():
        raise FileNotFoundError(
            f"expected the file of {section}.{key} ({text!r} in {config}, relative to the config file's folder) at "
            f"{resolved}, got no such file; fix the path in the config file or pass --{key} (relative to the current directory)"
        )
    return f"{resolved}:{dataset}" if dataset else str(resolved)


def load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"expected a config file, got no file at {path}")
    text = path.read_text()
    import yaml

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)  # parsed, never evaluated
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ValueError(f"expected valid YAML/JSON in {path}, got a syntax error{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of sections in {path}, got {type(data).__name__}")
    unknown = set(data) - {"data", "model", "train", "augment", "weights"}
    if unknown:
        raise ValueError(f"expected sections data/model/train/augment/weights in {path}, got {sorted(unknown)}")
    return data


def train(
    images: Annotated[Optional[str], typer.Option(help="Raw images: TIFF stack or file.h5:/dataset.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Labels: 0 = membrane, >0 = cell (binary or instance ids).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (relative to the current directory): best/last checkpoints and metrics.jsonl.")] = Path("runs/train"),
    config: Annotated[Optional[Path], typer.Option(help="YAML/JSON config file (sections data, model, train, augment, weights); its data paths are relative to its own folder.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Model preset (paper, cpu, tiny, aniso3d, …).")] = None,
    base_channels: Annotated[Optional[int], typer.Option(help="Override the preset's base channels.")] = None,
    depth: Annotated[Optional[int], typer.Option(help="Override the preset's depth.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps.")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Input tile size (legal; the paper: 572).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Tiles per step (the paper: 1).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for tiles, augmentation and init.")] = None,
    train_slices: Annotated[Optional[str], typer.Option(help="Training slices, e.g. 0:16 (default: all not in --val-slices).")] = None,
    val_slices: Annotated[Optional[str], typer.Option(help="Validation slices, e.g. 16:20 (default: none).")] = None,
    val_every: Annotated[Optional[int], typer.Option(help="Validate every N steps.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="Validate, select and keep a moving average of the weights with this decay (e.g. 0.999; docs/unetcore.md); default: the raw weights.")] = None,
    select_metric: Annotated[Optional[str], typer.Option(help="Validation key for best.safetensors (lower is better): pixel_error, or an ISBI metric (rand_error, info_error, rand_error_2012, warping_error), which turns on --isbi-metrics.")] = None,
    isbi_metrics: Annotated[bool, typer.Option(help="Validate with the ISBI 2012 metrics (slower).")] = False,
    instances: Annotated[bool, typer.Option(help="Labels are instance ids (each id is one cell).")] = False,
    three_d: Annotated[bool, typer.Option("--3d", help="Train a 3D model on a volume (needs a 3D preset).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.safetensors.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    weights: Annotated[Optional[str], typer.Option(help="Precomputed weight maps of the labels (Zarr from `emunet weights`, or TIFF).")] = None,
    init: Annotated[Optional[str], typer.Option(help="Fine-tune: start from this checkpoint (e.g. models/isbi2012.safetensors); its architecture is kept.")] = None,
    flow: Annotated[bool, typer.Option("--flow/--no-flow", help="Run as the Prefect flow train-unet (run log, retries, metrics artifact); --no-flow trains directly.")] = True,
    scheduler: Annotated[Optional[str], typer.Option(help="Train on a GPU worker of this Dask scheduler (with --flow).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Train on a local Dask cluster of N workers (with --flow).")] = None,
) -> None:
    """Train a U-Net with the paper's recipe (weighted loss, elastic deformation, momentum 0.99)."""
    with user_errors():
        from flows.unet_training import TrainSpec, check_out_dir, run_training

        cfg = load_config_file(config)
        data_cfg = dict(cfg.get("data") or {})
        flags = {"images": images, "labels": labels, "weights": weights}
        if config is not None:
            for key in DATA_PATH_KEYS:
                if data_cfg.get(key) is not None and flags[key] is None:  # a flag replaces it, as given
                    data_cfg[key] = resolve_config_path(data_cfg[key], config.parent, key, config)
        for key, value in (("images", images), ("labels", labels), ("train_slices", train_slices), ("val_slices", val_slices),
                           ("weights", weights)):
            if value is not None:
                data_cfg[key] = value
        if "images" not in data_cfg or "labels" not in data_cfg:
            raise ValueError("expected --images and --labels (or a config file's data section), got none")
        model_cfg = dict(cfg.get("model", {}))
        init_path = init
        if init_path is None and model_cfg.get("init") is not None and config is not None:
            init_path = resolve_config_path(model_cfg["init"], config.parent, "init", config, "model")
        model_cfg.pop("init", None)
        name = preset or model_cfg.pop("preset", "paper")
        model_cfg.pop("preset", None)
        for key, value in (("base_channels", base_channels), ("depth", depth)):
            if value is not None:
                model_cfg[key] = value
        train_cfg = dict(cfg.get("train", {}))
        for key, value in (("steps", steps), ("tile", tile), ("lr", lr), ("batch_size", batch_size), ("seed", seed),
                           ("val_every", val_every), ("select_metric", select_metric), ("ema_decay", ema_decay)):
            if value is not None:
                train_cfg[key] = value
        if (scheduler or workers) and not flow:
            raise ValueError("expected --scheduler/--workers with --flow (training on a Dask worker), got --no-flow")
        spec = TrainSpec(
            images=str(data_cfg["images"]), labels=str(data_cfg["labels"]), weights=data_cfg.get("weights"),
            out_dir=str(out), preset=name, model=model_cfg, train=train_cfg, augment=cfg.get("augment", {}),
            weight_map=cfg.get("weights", {}), train_slices=data_cfg.get("train_slices"), val_slices=data_cfg.get("val_slices"),
            instances=instances, three_d=three_d, device=device, resume=resume, isbi_metrics=isbi_metrics, init=init_path,
            progress=progress and not flow, command="emunet train",
        )  # fmt: skip
        check_out_dir(spec)  # before a Prefect server or a cluster starts: a refusal within a second
        if spec.weights:
            from flows._common import check_kind_of_data

            check_kind_of_data(spec.weights, "weights")
        if flow:
            from emunet.cli.flow_commands import train_with_flow

            result = train_with_flow(spec, scheduler=scheduler, workers=workers)
        else:
            result = run_training(spec, log=lambda line: console.print(line, highlight=False))
        echo_json(result)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
