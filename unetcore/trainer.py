"""The paper's training recipe: SGD with momentum 0.99, batch 1 of large tiles, weighted loss.

`Trainer.fit` samples augmented tiles (`unetcore.augment`), minimises the weighted
cross-entropy (`unetcore.loss`), validates every `val_every` steps with the tile predictor,
and writes to `out_dir`:

* ``last.safetensors`` – weights + momentum buffers + step: `Trainer.fit(resume=True)`
  continues from it, bit for bit (randomness is derived from (seed, step));
* ``best.safetensors`` – the weights with the best validation score so far (with
  `ema_decay`, the moving average of the weights: `unetcore.ema`);
* ``metrics.jsonl`` – one JSON object per logged step and per validation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetcore import geometry, memory
from unetcore.augment import AugmentConfig, sample_tile
from unetcore.checkpoint import load_checkpoint, save_checkpoint
from unetcore.ema import WeightAverage
from unetcore.loss import weighted_cross_entropy
from unetcore.model import UNet
from unetcore.normalization import Normalization
from unetcore.predict import PredictConfig, TilePredictor, resolve_device

MetricFn = Callable[[list[np.ndarray], list[np.ndarray]], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping (paper defaults where the paper says)."""

    steps: int = 2000  # optimizer steps
    tile: int | tuple[int, ...] = 572  # input tile (legal; the paper: 572)
    batch_size: int = 1  # the paper: a single large tile
    lr: float = 0.01  # peak learning rate (loss is a per-pixel mean)
    momentum: float = 0.99  # the paper
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"  # "cosine" (to 1 % of lr), "constant" or "step" (÷10 at 2/3)
    warmup_steps: int = 100  # linear warm-up (momentum 0.99 amplifies early steps 100×)
    grad_clip: float | None = 10.0  # max global gradient norm (None = off)
    val_every: int = 250  # validate every N steps (0 = only at the end)
    log_every: int = 10  # write the training loss every N steps
    checkpoint_every: int = 250  # write last.safetensors every N steps
    select_metric: str = "pixel_error"  # validation key that picks best.safetensors (lower = better)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    num_workers: int = 0  # threads that sample and augment the next tiles ahead of the model
    max_seconds: float | None = None  # time budget: chooses `steps` once, up front, from a timed probe
    ema_decay: float | None = None  # validate, select and keep a moving average of the weights (e.g. 0.999); None: the raw weights (the paper)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        whole = ("steps", "batch_size", "warmup_steps", "val_every", "log_every", "checkpoint_every", "seed", "num_workers")
        for name in whole:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected {name} as a whole number, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "grad_clip", "max_seconds", "ema_decay"):
            value = getattr(self, name)
            if value is None and name in ("grad_clip", "max_seconds", "ema_decay"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"expected {name} as a finite number, got {value!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"expected steps ≥ 1 and batch_size ≥ 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"expected lr > 0 and momentum in [0, 1), got {self.lr}, {self.momentum}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"expected ema_decay in (0, 1), e.g. 0.999 (leave it unset for the raw weights), got {self.ema_decay}")
        if self.lr_schedule not in ("cosine", "constant", "step"):
            raise ValueError(f"expected lr_schedule cosine, constant or step, got {self.lr_schedule!r}")

    def learning_rate(self, step: int, total: int | None = None) -> float:
        """Learning rate at `step` of a run of `total` steps (default: `steps`)."""
        total = self.steps if total is None else total
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "step":
            return self.lr * (0.1 if step >= 2 * total // 3 else 1.0)
        t = (step - self.warmup_steps) / max(total - self.warmup_steps, 1)
        return self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainData:
    """Images (uint8/uint16/float), class labels (0 = membrane, 1 = cell) and weight maps."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    weights: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not self.images or len(self.images) != len(self.labels):
            raise ValueError(
                f"expected as many label images as images (≥ 1), got {len(self.images)} and {len(self.labels)}"
            )
        for i, (img, lab) in enumerate(zip(self.images, self.labels, strict=True)):
            if img.shape != lab.shape:
                raise ValueError(f"expected image and labels of one shape at index {i}, got {img.shape} and {lab.shape}")
        if self.weights is not None and [w.shape for w in self.weights] != [i.shape for i in self.images]:
            raise ValueError("expected one weight map per image, of the image's shape")


class Trainer:
    """Trains a `UNet` on `TrainData`; see the module docstring for what it writes."""

    def __init__(
        self,
        model: UNet,
        train: TrainData,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        val: TrainData | None = None,
        normalization: Normalization | None = None,
        metric_fn: MetricFn | None = None,
        metadata: dict[str, Any] | None = None,
        progress: bool = True,
        baseline: bool = False,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.train_data = train
        self.val_data = val
        self.normalization = normalization or Normalization.fit(train.images)
        self.metric_fn = metric_fn
        self.metadata = dict(metadata or {})
        self.progress = progress
        self.out_dir = Path(out_dir)
        dims = model.config.spatial_dims
        tile = config.tile if isinstance(config.tile, tuple) else (config.tile,) * dims
        self.in_tile = tuple(int(t) for t in tile)
        self.out_tile = geometry.output_shape(model.config, self.in_tile)  # raises if illegal
        memory.check_training_tile(
            model.config, self.in_tile, batch=config.batch_size, budget=memory.device_budget(str(self.device)),
            where=f"this machine ({self.device})",
        )  # fmt: skip
        self._norm_images = [self.normalization.apply(img) for img in train.images]
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.step = 0
        self.total_steps = config.steps  # or what fits `max_seconds`, chosen once (`choose_steps`)
        self.best: float | None = None
        self.baseline = baseline
        self._scheduled = False  # total_steps chosen (by the budget, or loaded from last.safetensors)
        self._pool = None
        self._ahead: dict[int, Any] = {}
        self.data_wait_s = 0.0  # time the loop waited for its next batch of tiles (host)

    # -- checkpoints ----------------------------------------------------------------------
    def _meta(self, kind: str) -> dict[str, Any]:
        return dict(
            self.metadata,
            kind=kind,
            step=self.step,
            best=self.best,
            train_config=self.config.to_dict(),
            input_tile=list(self.in_tile),
            total_steps=self.total_steps,
        )

    def save_last(self) -> Path:
        extra = {}
        for i, p in enumerate(self.model.parameters()):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                extra[f"optim.momentum.{i}"] = buf
        if self.ema is not None:
            extra.update(self.ema.state())
        return save_checkpoint(self.out_dir / "last.safetensors", self.model, self.normalization, self._meta("last"), extra=extra)

    def load_last(self) -> None:
        ckpt = load_checkpoint(self.out_dir / "last.safetensors", device=self.device)
        if ckpt.config != self.model.config:
            raise ValueError(f"expected a checkpoint of config {self.model.config}, got {ckpt.config}")
        self.model.load_state_dict(ckpt.model.state_dict())
        for i, p in enumerate(self.model.parameters()):
            buf = ckpt.extra.get(f"optim.momentum.{i}")
            if buf is not None:
                self.optimizer.state[p]["momentum_buffer"] = buf.to(self.device)
        if self.ema is not None and not self.ema.load(ckpt.extra):  # a run without averaging so far
            self.ema = WeightAverage(self.model, self.ema.decay)
        self.step = int(ckpt.metadata["step"])
        if self.config.max_seconds is not None:  # keep the schedule the budget chose
            self.total_steps = min(self.config.steps, int(ckpt.metadata.get("total_steps", self.config.steps)))
        self._scheduled = True
        self.best = ckpt.metadata.get("best")
        self.normalization = ckpt.normalization
        self._norm_images = [self.normalization.apply(img) for img in self.train_data.images]

    # -- the loop -------------------------------------------------------------------------
    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch of `step` on the device, sampled ahead by worker threads when num_workers > 0.

        On CUDA the tiles are made in pinned host memory (by the sampling threads), so the
        copies are truly asynchronous (`non_blocking` from pageable memory is a blocking copy).
        """
        t0 = time.perf_counter()
        if self.config.num_workers <= 0:
            host = self._host(step)
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.config.num_workers, thread_name_prefix="tiles")
            for ahead in range(step, min(step + 2 * self.config.num_workers, self.total_steps)):
                if ahead not in self._ahead:
                    self._ahead[ahead] = self._pool.submit(self._host, ahead)
            host = self._ahead.pop(step).result()
        self.data_wait_s += time.perf_counter() - t0
        return tuple(t.to(self.device, non_blocking=True) for t in host)  # type: ignore[return-value]

    def _host(self, step: int) -> tuple[torch.Tensor, ...]:
        tensors = tuple(torch.from_numpy(a) for a in self._sample(step))
        return tuple(t.pin_memory() for t in tensors) if self.device.type == "cuda" else tensors

    def _sample(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tiles of one step; randomness depends only on (seed, step), so resuming is exact."""
        rng = np.random.default_rng([self.config.seed, step])
        tiles = []
        for _ in range(self.config.batch_size):
            i = int(rng.integers(len(self._norm_images)))
            w = None if self.train_data.weights is None else self.train_data.weights[i]
            tiles.append(
                sample_tile(self._norm_images[i], self.train_data.labels[i], w, self.in_tile, self.out_tile, rng, self.config.augment)
            )
        return (
            np.stack([t.image for t in tiles]),
            np.stack([t.labels for t in tiles]),
            np.stack([t.weights for t in tiles]),
        )

    def train_step(self) -> float:
        """One optimiser step; its loss (a host sync: the loop in `fit` syncs only when it logs)."""
        loss = self._step()
        return self._drain([loss])[0]

    def _drain(self, losses: list[torch.Tensor]) -> list[float]:
        """The losses of the last ``len(losses)`` steps, in one device→host copy; the first
        non-finite one raises (weights are saved only after a drain, never with NaNs)."""
        values = torch.stack(losses).float().cpu().tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                step = self.step - len(values) + i
                raise FloatingPointError(
                    f"expected a finite loss, got {value} at step {step}; lower the learning rate "
                    f"(now {self.config.learning_rate(step, self.total_steps):g}) or enable grad_clip"
                )
        return values

    def _step(self) -> torch.Tensor:
        """One optimiser step; the loss stays on the device (no host sync)."""
        self.model.train()
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)  # dropout masks
        x, y, w = self._batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate(self.step, self.total_steps)
        use_amp = self.config.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = self.model(x)  # (B, K, *out_tile)
        loss = weighted_cross_entropy(logits, y, w)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss.detach()

    @property
    def kept_model(self) -> UNet:
        """The weights that are validated and kept as best: the moving average, if any."""
        return self.model if self.ema is None else self.ema.model

    def validate(self) -> dict[str, float]:
        """Predict the validation images (`kept_model`); pixel error at 0.5, foreground IoU, `metric_fn`."""
        if self.val_data is None:
            return {}
        self.kept_model.eval()
        # The predictor converts the model it is given; on a CPU training stays contiguous
        # (a channels-last backward pass measured 0.9× there), so validation does not convert.
        layout = PredictConfig(device=str(self.device), batch_size=2, channels_last=self.device.type == "cuda")
        predictor = TilePredictor(self.kept_model, self.normalization, layout)
        probs = predictor.predict_many(list(self.val_data.images))
        cells = [lab > 0 for lab in self.val_data.labels]
        pred = [p > 0.5 for p in probs]
        errors = sum(int((p != c).sum()) for p, c in zip(pred, cells, strict=True))
        inter = sum(int((p & c).sum()) for p, c in zip(pred, cells, strict=True))
        union = sum(int((p | c).sum()) for p, c in zip(pred, cells, strict=True))
        result = {
            "pixel_error_at_0.5": errors / sum(c.size for c in cells),
            "iou": inter / max(union, 1),
        }
        if self.metric_fn is not None:
            result.update(self.metric_fn(probs, list(self.val_data.labels)))
        result.setdefault("pixel_error", result["pixel_error_at_0.5"])
        return result

    def _validate_and_select(self, log: Any) -> dict[str, float]:
        """Validate; keep the weights as best.safetensors when `select_metric` improved."""
        scores = self.validate()
        key = scores.get(self.config.select_metric)
        if key is None:
            raise ValueError(
                f"expected select_metric among the validation keys {sorted(scores)}, got {self.config.select_metric!r}"
                + ("; the ISBI metrics (rand_error, info_error, …) need --isbi-metrics" if self.metric_fn is None else "")
            )
        if self.best is None or key < self.best:
            self.best = float(key)
            save_checkpoint(self.out_dir / "best.safetensors", self.kept_model, self.normalization,
                            dict(self._meta("best"), validation=scores))  # fmt: skip
        log.write(json.dumps({"step": self.step, "validation": scores}) + "\n")
        log.flush()
        return scores

    def _probe_seconds(self, steps: int = 5) -> tuple[float, float]:
        """(seconds per training step, seconds per validation), timed on a throwaway copy.

        The copy and its own optimiser take real tiles of the first steps; the run's model,
        optimiser and randomness are untouched, so choosing the schedule from this probe
        leaves the run identical to one given the chosen `steps` directly.
        """
        import copy

        model = copy.deepcopy(self.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=self.config.momentum)
        model.train()
        use_amp = self.config.amp and self.device.type == "cuda"
        times = []
        for step in range(steps + 1):  # the first one warms up (allocations, kernels)
            t0 = time.perf_counter()
            x, y, w = (torch.from_numpy(a).to(self.device) for a in self._sample(step))
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = weighted_cross_entropy(model(x), y, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            times.append(time.perf_counter() - t0)
        del model, optimizer
        per_val = 0.0
        if self.val_data is not None:
            t0 = time.perf_counter()
            self.validate()
            per_val = time.perf_counter() - t0
        return float(np.median(times[1:])), per_val

    def choose_steps(self) -> int:
        """With `max_seconds`, the number of steps that fits the budget, decided once, up front.

        A run is defined by its number of steps: the budget only picks that number (from a
        timed probe of training steps and one validation), it never changes during the run,
        and it is stored in the checkpoints, so a resumed run keeps it and passing the
        chosen number as `steps` reproduces the run on any machine.
        """
        budget = self.config.max_seconds
        if budget is None:
            return self.config.steps
        per_step, per_val = self._probe_seconds()
        every = self.config.val_every or self.config.steps
        fits = int(budget / (per_step + per_val / every))
        return max(1, min(self.config.steps, fits))

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Run to `config.steps` (or what fits `max_seconds`); returns validation scores and timings."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resume = resume and (self.out_dir / "last.safetensors").is_file()  # nothing saved yet: a fresh start
        if resume:
            self.load_last()
        log = open(self.out_dir / "metrics.jsonl", "a" if resume else "w")
        scores: dict[str, float] = {}
        if not self._scheduled:
            self.total_steps = self.choose_steps()
            self._scheduled = True
            if self.config.max_seconds is not None:
                log.write(json.dumps({"step": 0, "schedule": {"steps": self.total_steps, "max_seconds": self.config.max_seconds}}) + "\n")
        if self.baseline and self.step == 0 and self.val_data is not None:
            self._validate_and_select(log)  # the initial weights compete for best.safetensors too
        start, start_step = time.perf_counter(), self.step
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            bar = Progress(
                TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn(), TimeRemainingColumn(), disable=not self.progress, transient=False,
            )
            with bar:
                task = bar.add_task("train", total=self.total_steps, completed=self.step, loss=float("nan"))
                running = None
                pending: list[torch.Tensor] = []  # losses on the device since the last host sync
                while self.step < self.total_steps:
                    pending.append(self._step())
                    last = self.step == self.total_steps
                    validate = self.val_data is not None and (last or (self.config.val_every and self.step % self.config.val_every == 0))
                    save = last or self.step % self.config.checkpoint_every == 0
                    logged = self.step % self.config.log_every == 0
                    if not (last or validate or save or logged):
                        continue  # no host sync: the next batch's copy and kernels queue behind this step's
                    for loss in self._drain(pending):
                        running = loss if running is None else 0.95 * running + 0.05 * loss
                    pending = []
                    bar.update(task, completed=self.step, loss=running)
                    if logged:
                        log.write(json.dumps({"step": self.step, "loss": loss, "loss_ema": running,
                                              "lr": self.config.learning_rate(self.step - 1, self.total_steps),
                                              "elapsed_s": time.perf_counter() - start}) + "\n")
                        log.flush()
                    if validate:
                        scores = self._validate_and_select(log)
                    if save:
                        self.save_last()
        finally:
            log.close()
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool, self._ahead = None, {}
        if self.val_data is None:
            save_checkpoint(self.out_dir / "best.safetensors", self.kept_model, self.normalization, self._meta("final"))
        elapsed = time.perf_counter() - start
        return {"validation": scores, "steps": self.step, "seconds": elapsed,
                "seconds_per_step": elapsed / max(self.step - start_step, 1), "best": self.best,
                "data_wait_s": self.data_wait_s}
