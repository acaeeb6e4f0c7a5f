"""Training as plain functions over a JSON-able `TrainSpec`: shared by `emunet train` (with
or without Prefect) and the `train_unet` flow, and shipped as-is to a Dask GPU worker.

No Prefect here: `run_training` and `evaluate_checkpoint` run wherever they are called
(in process, or on a worker via ``client.submit(..., resources={"GPU": 1})``)::

    TrainSpec ──► read images / labels / weights (TIFF, HDF5 or Zarr)
              ──► configs (preset + overrides, TrainConfig, WeightMapConfig)
              ──► weight maps (precomputed, or Eq. 2 per training slice)
              ──► model: He init, or the weights of `init` (fine-tuning a shipped model)
              ──► Trainer.fit ──► best.safetensors, last.safetensors, metrics.jsonl
              ──► model-card.md (`flows.model_card`)

Fine-tuning (``init``): the model's architecture comes from the checkpoint (a preset or
model override that disagrees is refused), its weights are the starting point, the grey
normalisation is re-fitted to the new training images (so a lab's contrast maps onto
what the model learnt), and the initial weights are validated first: best.safetensors is
never worse on the validation slices than the model it started from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

Log = Callable[[str], Any]

# Peak learning rate of a fine-tuning run when none is given: a third of the shipped model's
# 0.003. Restarting at a trained model's full rate first undoes part of its training
# (docs/models/isbi2012.md, recipe study); from-scratch runs keep TrainConfig's default.
FINETUNE_LR = 0.001

# Validation keys that only the ISBI 2012 metrics give (threshold-swept, lower is better).
ISBI_KEYS = ("rand_error", "info_error", "rand_error_2012", "warping_error", "warping_error_jain")


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


class TrainSpec(BaseModel):
    """Data, model and recipe of one training run (the sections of `emunet train`'s config)."""

    model_config = ConfigDict(extra="forbid")

    images: str = Field(description="Raw images: TIFF stack, file.h5:/dataset or a Zarr volume.")
    labels: str = Field(description="Labels of the images' shape: 0 = membrane, > 0 = cell.")
    weights: str | None = Field(None, description="Precomputed weight maps of the labels' shape (Zarr from precompute-weights, or TIFF).")
    out_dir: str = Field("runs/train", description="Folder for best/last checkpoints and metrics.jsonl.")
    preset: str = Field("paper", description="Model preset (paper, cpu, tiny, aniso3d, …).")
    model: dict[str, Any] = Field(default_factory=dict, description="UNetConfig overrides, e.g. {base_channels: 16}.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields, e.g. {steps: 8000, tile: 428, lr: 0.01}.")
    augment: dict[str, Any] = Field(default_factory=dict, description="AugmentConfig fields.")
    weight_map: dict[str, Any] = Field(default_factory=dict, description="WeightMapConfig fields (w0, sigma, class_balance, cutoff).")
    train_slices: str | None = Field(None, description="Training slices, e.g. 0:16 (default: all not in val_slices).")
    val_slices: str | None = Field(None, description="Validation slices, e.g. 16:20 (default: none).")
    instances: bool = Field(False, description="Labels are instance ids (each id is one cell).")
    three_d: bool = Field(False, description="Train a 3D model on the volume (needs a 3D preset).")
    device: str = Field("auto", description="auto, cpu or cuda[:N] (on the machine that trains).")
    resume: bool = Field(False, description="Continue from out_dir/last.safetensors.")
    isbi_metrics: bool = Field(False, description="Validate during training with the ISBI 2012 metrics (slower; on when select_metric is one of them).")
    init: str | None = Field(None, description="Checkpoint to start from (fine-tuning): its architecture and weights; None = He init.")
    _init_ckpt: Any = PrivateAttr(None)
    progress: bool = Field(False, description="A progress bar on stderr of the training process.")
    command: str = Field("train_unet", description="Recorded in the checkpoint's metadata.")

    def configs(self) -> tuple[Any, Any, Any]:
        """(UNetConfig, TrainConfig, WeightMapConfig): the preset with its overrides (or the
        `init` checkpoint's architecture), the recipe."""
        from unetcore.augment import AugmentConfig
        from unetcore.config import UNetConfig, preset
        from unetcore.trainer import TrainConfig
        from unetcore.weightmap import WeightMapConfig

        model = {k: v for k, v in self.model.items() if k != "preset"}
        if self.init:
            model_config = self.init_checkpoint().config
            if model:
                raise ValueError(
                    f"expected no model overrides with init (the architecture is the checkpoint's), got {sorted(model)}; "
                    "drop them or train from scratch without --init"
                )
            named = self.init_checkpoint().metadata.get("preset")
            if self.preset not in ("paper", named) and preset(self.preset) != model_config:
                raise ValueError(
                    f"expected the init checkpoint's preset ({named or 'its own architecture'}), got preset "
                    f"{self.preset!r}, a different architecture; drop --preset when fine-tuning"
                )
        else:
            model_config = UNetConfig.from_dict({**preset(self.preset).to_dict(), **model})
        train = dict(self.train)
        if self.init and "lr" not in train:
            train["lr"] = FINETUNE_LR
        if isinstance(train.get("tile"), list):
            train["tile"] = tuple(train["tile"])
        train_config = TrainConfig(**{**train, "device": self.device, "augment": AugmentConfig(**self.augment)})
        return model_config, train_config, WeightMapConfig(**self.weight_map)

    def init_checkpoint(self) -> Any:
        """The `init` checkpoint, loaded (and verified) once per spec."""
        from unetcore.checkpoint import load_checkpoint

        if self._init_ckpt is None:
            if not Path(str(self.init)).is_file():
                raise FileNotFoundError(f"expected a checkpoint to fine-tune at init={self.init!r}, got no such file")
            self._init_ckpt = load_checkpoint(str(self.init))
        return self._init_ckpt

    def select_needs_isbi(self) -> bool:
        return self.train.get("select_metric") in ISBI_KEYS

    def is_3d(self, model_config: Any) -> bool:
        if self.three_d and model_config.spatial_dims != 3:
            raise ValueError(f"expected a 3D preset with --3d, got a {model_config.spatial_dims}D model")
        given = [f"{flag} {value}" for flag, value in (("--train-slices", self.train_slices), ("--val-slices", self.val_slices))
                 if value]
        if model_config.spatial_dims == 3 and given:
            raise ValueError(
                f"expected no slice split with a 3D model, got {', '.join(given)} (from the flags or the config's data "
                "section): a 3D model trains on the whole volume, slices of it are not samples; drop them (over a "
                "config: --train-slices '' --val-slices '') and hold out a validation sub-volume in files of its own"
            )
        return model_config.spatial_dims == 3

    def split(self, n: int) -> tuple[list[int], list[int]]:
        """(training, validation) slice indices of an n-slice stack; disjoint."""
        val = parse_slices(self.val_slices, n) if self.val_slices else []
        train = parse_slices(self.train_slices, n)
        if not self.train_slices:
            train = [i for i in train if i not in val]
        overlap = sorted(set(train) & set(val))
        if overlap:
            raise ValueError(f"expected disjoint training and validation slices, got both: {overlap}")
        if not train:
            raise ValueError(f"expected at least one training slice, got none of {n} (all are validation slices)")
        return train, val


@dataclass
class Prepared:
    """What the Trainer needs: data, validation data, configs and metadata."""

    train: Any  # TrainData
    val: Any  # TrainData | None
    model_config: Any
    train_config: Any
    metadata: dict[str, Any]


def _stack(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[None]


def prepare(spec: TrainSpec, log: Log) -> Prepared:
    """Read the data, build the configs, split the slices and make the weight maps."""
    from flows._common import read_any
    from unetcore.trainer import TrainData
    from unetcore.weightmap import border_weight_map, check_has_membrane

    model_config, train_config, weight_config = spec.configs()
    raw, lab = read_any(spec.images, "image"), read_any(spec.labels, "labels")
    if raw.shape != lab.shape:
        raise ValueError(f"expected images and labels of one shape, got {raw.shape} and {lab.shape}")
    check_has_membrane(int(np.count_nonzero(lab)), lab.size, spec.labels)
    given = read_any(spec.weights, "weights").astype(np.float32) if spec.weights else None
    if given is not None and given.shape != lab.shape:
        raise ValueError(f"expected weight maps of the labels' shape {lab.shape}, got {given.shape} at {spec.weights}")
    t0 = time.perf_counter()
    if spec.is_3d(model_config):
        raws, labs, maps, val = [raw], [lab], None if given is None else [given], None
    else:
        raw3, lab3 = _stack(raw), _stack(lab)
        train_idx, val_idx = spec.split(raw3.shape[0])
        raws, labs = [raw3[i] for i in train_idx], [lab3[i] for i in train_idx]
        maps = None if given is None else [_stack(given)[i] for i in train_idx]
        val = TrainData([raw3[i] for i in val_idx], [(lab3[i] > 0).astype(np.int64) for i in val_idx]) if val_idx else None
    if maps is None:
        maps = [border_weight_map(l, weight_config, instances=spec.instances) for l in labs]
        log(f"weight maps for {len(labs)} images in {time.perf_counter() - t0:.1f} s")
    else:
        log(f"precomputed weight maps for {len(labs)} images from {spec.weights}")
    data = {"images": spec.images, "labels": spec.labels, "train_slices": spec.train_slices, "val_slices": spec.val_slices,
            "weights": spec.weights}  # fmt: skip
    metadata = {
        "data": {k: str(v) for k, v in data.items() if v is not None},
        **({"init": _init_record(spec)} if spec.init else {}),
        "weights": {"w0": weight_config.w0, "sigma": weight_config.sigma, "class_balance": weight_config.class_balance}
        if given is None else {"precomputed": spec.weights},
        "preset": spec.init_checkpoint().metadata.get("preset") if spec.init else spec.preset,
        "command": spec.command,
    }
    classes = [(l > 0).astype(np.int64) for l in labs]
    return Prepared(TrainData(raws, classes, maps), val, model_config, train_config, metadata)


def _init_record(spec: TrainSpec) -> dict[str, Any]:
    from unetcore.checkpoint import file_sha256

    ckpt = spec.init_checkpoint()
    return {"checkpoint": str(spec.init), "file_sha256": file_sha256(str(spec.init)), "content_sha256": ckpt.content_hash,
            "step": ckpt.metadata.get("step"), "preset": ckpt.metadata.get("preset")}  # fmt: skip


def isbi_metric_fn(probs: list, labels: list) -> dict[str, float]:
    """Validation with the ISBI 2012 metrics (the core may not import pipeline/; we may)."""
    from flows._common import isbi_scores

    return isbi_scores(np.stack(probs), np.stack(labels))


# what a run writes in its out_dir (checkpoints, their JSON headers, the log, the card)
RUN_FILES = ("last.safetensors", "best.safetensors", "last.json", "best.json", "metrics.jsonl", "model-card.md")


def check_out_dir(spec: TrainSpec) -> None:
    """Refuse an ``out_dir`` that is, holds or lies inside what training reads (the images,
    labels, weight maps, the ``init`` checkpoint), and, without ``resume``, one that holds an
    earlier run: training writes its checkpoints and log there and would replace them."""
    from pipeline.ownership import OutputExistsError, check_not_an_input

    check_not_an_input(spec.out_dir, (spec.images, spec.labels, spec.weights, spec.init), what="--out")
    out = Path(spec.out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"expected --out to be a folder, got a file at {out}; choose another --out")
    earlier = [name for name in RUN_FILES if (out / name).exists()]
    if earlier and not spec.resume:
        raise OutputExistsError(
            f"expected --out to be a new or empty folder, got {out}, which holds an earlier run or files a run would "
            f"replace ({', '.join(earlier)}); pass --resume to continue an earlier run, or choose another --out (a run's "
            "checkpoints are never replaced)"
        )


def run_training(spec: TrainSpec | dict[str, Any], log: Log | None = None) -> dict[str, Any]:
    """Train with `unetcore.trainer.Trainer`; the fit result plus where the checkpoints are."""
    import torch

    from unetcore.model import UNet
    from unetcore.trainer import Trainer

    spec = TrainSpec.model_validate(spec)
    check_out_dir(spec)
    log = log or logging.getLogger("emunet.train").info
    ready = prepare(spec, log)
    from flows.model_card import write_model_card

    torch.manual_seed(ready.train_config.seed)
    model = UNet(ready.model_config)
    if spec.init:
        model.load_state_dict(spec.init_checkpoint().model.state_dict())
    isbi = spec.isbi_metrics or spec.select_needs_isbi()
    trainer = Trainer(
        model, ready.train, ready.train_config, spec.out_dir, val=ready.val,
        metric_fn=isbi_metric_fn if isbi else None, metadata=ready.metadata, progress=spec.progress,
        baseline=bool(spec.init),
    )  # fmt: skip
    start = f"from {spec.init}" if spec.init else spec.preset
    log(
        f"training {start} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
        f"{len(ready.train.images)} image(s), tile {trainer.in_tile} → {trainer.out_tile}, "
        f"{ready.train_config.steps} steps on {trainer.device}"
    )
    result = trainer.fit(resume=spec.resume)
    out = Path(spec.out_dir)
    result.update(out=str(out), best_checkpoint=str(out / "best.safetensors"), last_checkpoint=str(out / "last.safetensors"),
                  device=str(trainer.device))  # fmt: skip
    result["model_card"] = str(write_model_card(spec, result))
    return result


def evaluate_checkpoint(spec: TrainSpec | dict[str, Any], checkpoint: str) -> dict[str, Any] | None:
    """ISBI 2012 metrics of `checkpoint` on the validation slices (None without any, or in 3D)."""
    from flows._common import isbi_scores, read_any
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    spec = TrainSpec.model_validate(spec)
    ckpt = load_checkpoint(checkpoint)
    if not spec.val_slices or spec.is_3d(ckpt.config):
        return None
    raw, lab = _stack(read_any(spec.images, "image")), _stack(read_any(spec.labels, "labels"))
    _, val_idx = spec.split(raw.shape[0])
    predictor = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(device=spec.device, batch_size=2))
    probability = predictor.predict_stack(raw[val_idx])
    return {"checkpoint": checkpoint, "slices": val_idx, "scores": isbi_scores(probability, lab[val_idx])}
