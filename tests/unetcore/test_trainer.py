"""The trainer: learns, resumes bit for bit, writes checkpoints and a metrics log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetcore.augment import AugmentConfig
from unetcore.checkpoint import load_checkpoint
from unetcore.config import preset
from unetcore.model import UNet
from unetcore.trainer import TrainConfig, TrainData, Trainer

CONFIG = preset("tiny").replace(base_channels=4)


def _trainer(tmp_path, data, steps, **kw) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, tile=100, lr=0.01, warmup_steps=5, val_every=0, checkpoint_every=5,
                         log_every=1, device="cpu", **kw)
    return Trainer(UNet(CONFIG), data, config, tmp_path, progress=False)


def _fitted(tmp_path, data, steps, **kw) -> Trainer:
    """`_trainer` run to its end."""
    trainer = _trainer(tmp_path, data, steps, **kw)
    trainer.fit()
    return trainer


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Bit-identical parameters."""
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_loss_goes_down(tmp_path, data) -> None:
    trainer = _trainer(tmp_path, data, 40, augment=AugmentConfig.off())
    first = np.mean([trainer.train_step() for _ in range(8)])
    for _ in range(24):
        trainer.train_step()
    last = np.mean([trainer.train_step() for _ in range(8)])
    assert last < 0.8 * first


def test_resume_is_bit_identical(tmp_path, data) -> None:
    straight = _fitted(tmp_path / "a", data, 10)
    _fitted(tmp_path / "b", data, 5)  # the first half, then resumed
    resumed = _trainer(tmp_path / "b", data, 10)
    resumed.fit(resume=True)
    assert resumed.step == 10
    assert same_weights(straight.model, resumed.model)


def test_outputs_written(tmp_path, data) -> None:
    val = TrainData(data.images[:1], data.labels[:1])
    torch.manual_seed(0)
    trainer = Trainer(UNet(CONFIG), data, TrainConfig(steps=4, tile=100, val_every=2, checkpoint_every=2, log_every=1, device="cpu"),
                      tmp_path, val=val, progress=False, metadata={"dataset": "synthetic"})
    result = trainer.fit()
    assert {"pixel_error", "iou"} <= set(result["validation"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("validation" in line for line in lines) and any("loss" in line for line in lines)
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert best.metadata["dataset"] == "synthetic" and best.metadata["kind"] == "best"
    last = load_checkpoint(tmp_path / "last.safetensors")
    assert last.metadata["step"] == 4 and any(k.startswith("optim.") for k in last.extra)


def test_bad_configs(tmp_path, data) -> None:
    with pytest.raises(ValueError, match="expected lr > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="legal U-Net input size"):
        Trainer(UNet(CONFIG), data, TrainConfig(tile=101), tmp_path, progress=False)
    with pytest.raises(ValueError, match="expected image and labels of one shape"):
        TrainData([np.zeros((4, 4))], [np.zeros((4, 5))])


def test_learning_rate_schedule() -> None:
    config = TrainConfig(steps=1000, lr=0.01, warmup_steps=100)
    assert config.learning_rate(0) == pytest.approx(1e-4)
    assert config.learning_rate(99) == pytest.approx(0.01)
    assert config.learning_rate(999) == pytest.approx(1e-4, rel=0.05)


def test_prefetch_workers_give_the_same_run(tmp_path, data) -> None:
    plain = _fitted(tmp_path / "a", data, 6)
    threaded = _fitted(tmp_path / "b", data, 6, num_workers=2)
    assert same_weights(plain.model, threaded.model)


def test_time_budget_chooses_the_steps_up_front(tmp_path, data) -> None:
    """The budget picks a number of steps once; the run is then the run of that many steps."""
    budgeted = _trainer(tmp_path / "a", data, 10_000, max_seconds=2.0)
    result = budgeted.fit()
    chosen = result["steps"]
    assert 1 <= chosen < 10_000 and budgeted.total_steps == chosen
    schedule = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert schedule["schedule"]["steps"] == chosen
    assert load_checkpoint(tmp_path / "a" / "last.safetensors").metadata["total_steps"] == chosen
    direct = _fitted(tmp_path / "b", data, chosen)
    assert same_weights(budgeted.model, direct.model)


def test_baseline_validation_lets_the_initial_weights_win(tmp_path, data) -> None:
    """Fine-tuning validates the initial weights first: a worse run never replaces them."""
    val = TrainData(data.images[:1], data.labels[:1])
    torch.manual_seed(0)
    config = TrainConfig(steps=2, tile=100, lr=0.01, warmup_steps=1, val_every=1, device="cpu", log_every=1)
    trainer = Trainer(UNet(CONFIG), data, config, tmp_path, val=val, progress=False, baseline=True)
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validations = [line for line in lines if "validation" in line]
    assert [line["step"] for line in validations] == [0, 1, 2]
    best = load_checkpoint(tmp_path / "best.safetensors").metadata
    scores = [line["validation"]["pixel_error"] for line in validations]
    assert best["best"] == pytest.approx(min(scores)) and best["step"] == scores.index(min(scores))


def test_validation_on_a_cpu_leaves_the_trained_weights_contiguous(tmp_path, data) -> None:
    """The predictor converts the model it gets to channels-last; a CPU trainer's validation
    must not (its backward pass is slower in that layout), so training after it is unchanged."""
    trainer = _trainer(tmp_path, data, 1)
    trainer.val_data = TrainData(data.images[:1], data.labels[:1])
    trainer.validate()
    assert all(p.is_contiguous() for p in trainer.model.parameters())


def test_unknown_select_metric_is_named(tmp_path, data) -> None:
    val = TrainData(data.images[:1], data.labels[:1])
    config = TrainConfig(steps=1, tile=100, val_every=1, device="cpu", select_metric="rand_error")
    trainer = Trainer(UNet(CONFIG), data, config, tmp_path, val=val, progress=False)
    with pytest.raises(ValueError, match="expected select_metric among the validation keys.*--isbi-metrics"):
        trainer.fit()


def test_a_diverging_run_stops_at_its_first_non_finite_loss_and_never_saves_it(tmp_path, data) -> None:
    """`fit` syncs with the host only when it logs, validates or saves: the losses since the
    last sync are checked together, the first non-finite one is named, and no checkpoint
    written holds the diverged weights."""
    torch.manual_seed(0)
    config = TrainConfig(steps=200, tile=100, lr=1e4, momentum=0.9, warmup_steps=0, grad_clip=None, val_every=0,
                         checkpoint_every=3, log_every=7, device="cpu", augment=AugmentConfig.off())
    trainer = Trainer(UNet(CONFIG), data, config, tmp_path, progress=False)
    with pytest.raises(FloatingPointError, match=r"expected a finite loss, got (nan|inf) at step \d+") as info:
        trainer.fit()
    bad = int(str(info.value).split(" at step ")[1].split(";")[0])
    assert bad < trainer.step <= bad + 3  # found at the next sync point, not later
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in logged) and all(r["step"] <= bad for r in logged)
    if (tmp_path / "last.safetensors").exists():
        saved = load_checkpoint(tmp_path / "last.safetensors")
        assert all(torch.isfinite(p).all() for p in saved.model.parameters())
        assert saved.metadata["step"] <= bad


def test_fit_reports_the_time_spent_waiting_for_tiles(tmp_path, data) -> None:
    result = _trainer(tmp_path, data, 6).fit()
    assert 0 < result["data_wait_s"] < result["seconds"]
