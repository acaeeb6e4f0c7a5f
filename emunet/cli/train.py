"""`emunet train`: the paper's recipe from a config file and/or flags.

A config file (YAML or JSON) may hold the sections ``data``, ``model``, ``train``,
``augment`` and ``weights``; flags given on the command line override it. Example::

    data: {images: train-volume.tif, labels: train-labels.tif, train_slices: "0:16", val_slices: "16:20"}
    model: {preset: cpu}
    train: {steps: 8000, tile: 428, lr: 0.01, seed: 0}
    weights: {w0: 10, sigma: 5, class_balance: frequency}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emunet.cli.common import console, echo_json, user_errors


def parse_slices(spec: str | None, n: int) -> list[int]:
    """'0:16' or '0,3,5' or '' → indices; raises on indices outside 0..n-1."""
    if spec is None or spec == "":
        return list(range(n))
    if ":" in spec:
        lo, _, hi = spec.partition(":")
        idx = list(range(n))[slice(int(lo) if lo else None, int(hi) if hi else None)]
    else:
        idx = [int(v) for v in spec.split(",") if v.strip()]
    bad = [i for i in idx if not 0 <= i < n]
    if bad or not idx:
        raise ValueError(f"expected slice indices in 0..{n - 1}, got {spec!r}")
    return idx


def load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"expected a config file, got no file at {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)  # parsed, never evaluated
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of sections in {path}, got {type(data).__name__}")
    unknown = set(data) - {"data", "model", "train", "augment", "weights"}
    if unknown:
        raise ValueError(f"expected sections data/model/train/augment/weights in {path}, got {sorted(unknown)}")
    return data


def isbi_metric_fn(probs: list, labels: list) -> dict[str, float]:
    """Validation with the ISBI 2012 metrics (the CLI may use pipeline/; the core may not)."""
    import numpy as np

    from pipeline.metrics.evaluate import evaluate_stack

    scores = evaluate_stack(np.stack(probs), np.stack(labels))
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}


def train(
    images: Annotated[Optional[str], typer.Option(help="Raw images: TIFF stack or file.h5:/dataset.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Labels: 0 = membrane, >0 = cell (binary or instance ids).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder: best/last checkpoints and metrics.jsonl.")] = Path("runs/train"),
    config: Annotated[Optional[Path], typer.Option(help="YAML/JSON config file (sections data, model, train, augment, weights).")] = None,
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
    select_metric: Annotated[Optional[str], typer.Option(help="Validation key for best.safetensors (lower is better).")] = None,
    isbi_metrics: Annotated[bool, typer.Option(help="Validate with the ISBI 2012 metrics (slower).")] = False,
    instances: Annotated[bool, typer.Option(help="Labels are instance ids (each id is one cell).")] = False,
    three_d: Annotated[bool, typer.Option("--3d", help="Train a 3D model on a volume (needs a 3D preset).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.safetensors.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a U-Net with the paper's recipe (weighted loss, elastic deformation, momentum 0.99)."""
    with user_errors():
        import numpy as np
        import torch

        from unetcore.augment import AugmentConfig
        from unetcore.config import UNetConfig
        from unetcore.config import preset as get_preset
        from unetcore.io import read_array
        from unetcore.model import UNet
        from unetcore.trainer import TrainConfig, TrainData, Trainer
        from unetcore.weightmap import WeightMapConfig, border_weight_map

        cfg = load_config_file(config)
        data_cfg = dict(cfg.get("data", {}))
        for key, value in (("images", images), ("labels", labels), ("train_slices", train_slices), ("val_slices", val_slices)):
            if value is not None:
                data_cfg[key] = value
        if "images" not in data_cfg or "labels" not in data_cfg:
            raise ValueError("expected --images and --labels (or a config file's data section), got none")
        model_cfg = dict(cfg.get("model", {}))
        name = preset or model_cfg.pop("preset", "paper")
        model_cfg.pop("preset", None)
        for key, value in (("base_channels", base_channels), ("depth", depth)):
            if value is not None:
                model_cfg[key] = value
        model_config = UNetConfig.from_dict({**get_preset(name).to_dict(), **model_cfg})
        train_cfg = dict(cfg.get("train", {}))
        for key, value in (("steps", steps), ("tile", tile), ("lr", lr), ("batch_size", batch_size), ("seed", seed),
                           ("val_every", val_every), ("select_metric", select_metric)):
            if value is not None:
                train_cfg[key] = value
        if isinstance(train_cfg.get("tile"), list):
            train_cfg["tile"] = tuple(train_cfg["tile"])
        train_config = TrainConfig(**train_cfg, device=device, augment=AugmentConfig(**cfg.get("augment", {})))
        weight_config = WeightMapConfig(**cfg.get("weights", {}))

        raw = read_array(data_cfg["images"])
        lab = read_array(data_cfg["labels"])
        if raw.shape != lab.shape:
            raise ValueError(f"expected images and labels of one shape, got {raw.shape} and {lab.shape}")
        t0 = time.perf_counter()
        if three_d or model_config.spatial_dims == 3:
            if model_config.spatial_dims != 3:
                raise ValueError(f"expected a 3D preset with --3d, got a {model_config.spatial_dims}D model")
            raw_list, lab_list = [raw], [lab]
            val_data = None
        else:
            n = raw.shape[0] if raw.ndim == 3 else 1
            raw3, lab3 = (raw, lab) if raw.ndim == 3 else (raw[None], lab[None])
            val_idx = parse_slices(data_cfg["val_slices"], n) if data_cfg.get("val_slices") else []
            train_idx = parse_slices(data_cfg.get("train_slices"), n)
            train_idx = [i for i in train_idx if i not in val_idx] if not data_cfg.get("train_slices") else train_idx
            overlap = sorted(set(train_idx) & set(val_idx))
            if overlap:
                raise ValueError(f"expected disjoint training and validation slices, got both: {overlap}")
            raw_list, lab_list = [raw3[i] for i in train_idx], [lab3[i] for i in train_idx]
            val_data = (
                TrainData([raw3[i] for i in val_idx], [(lab3[i] > 0).astype(np.int64) for i in val_idx]) if val_idx else None
            )
        weight_maps = [border_weight_map(l, weight_config, instances=instances) for l in lab_list]
        classes = [(l > 0).astype(np.int64) for l in lab_list]
        console.print(f"weight maps for {len(lab_list)} images in {time.perf_counter() - t0:.1f} s")

        torch.manual_seed(train_config.seed)
        model = UNet(model_config)
        metadata = {
            "data": {k: str(v) for k, v in data_cfg.items()},
            "weights": {"w0": weight_config.w0, "sigma": weight_config.sigma, "class_balance": weight_config.class_balance},
            "preset": name,
            "command": "emunet train",
        }
        trainer = Trainer(
            model, TrainData(raw_list, classes, weight_maps), train_config, out,
            val=val_data, metric_fn=isbi_metric_fn if isbi_metrics else None, metadata=metadata, progress=progress,
        )
        console.print(
            f"training {name} ({sum(p.numel() for p in model.parameters()):,} parameters) on {len(raw_list)} image(s), "
            f"tile {trainer.in_tile} → {trainer.out_tile}, {train_config.steps} steps on {trainer.device}"
        )
        result = trainer.fit(resume=resume)
        result["out"] = str(out)
        echo_json(result)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
