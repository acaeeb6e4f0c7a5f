"""`unetcore.ema`: the moving average of the weights, and the trainer that validates and keeps it."""

from __future__ import annotations

import pytest
import torch

from tests.unetcore.test_trainer import CONFIG, _fitted, same_weights
from unetcore.checkpoint import load_checkpoint
from unetcore.ema import WeightAverage
from unetcore.model import UNet
from unetcore.trainer import TrainConfig, TrainData, Trainer


def test_the_average_follows_its_ramped_decay_exactly() -> None:
    """After n updates every weight is the closed form of the recurrence with d_k = min(decay, (1+k)/(10+k))."""
    torch.manual_seed(0)
    model = UNet(CONFIG)
    start = [p.detach().clone() for p in model.parameters()]
    average = WeightAverage(model, decay=0.5)
    expected = [p.clone() for p in start]
    for k in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(model)
        d = min(0.5, (1 + k) / (10 + k))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    assert average.updates == 6
    for got, want in zip(average.model.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not any(p.requires_grad for p in average.model.parameters())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_a_decay_outside_0_1_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="expected ema_decay"):
        TrainConfig(ema_decay=decay)


def test_averaging_leaves_the_training_itself_unchanged(tmp_path, data) -> None:
    """The optimiser steps the raw weights: with or without an average, the same raw weights."""
    plain = _fitted(tmp_path / "plain", data, 8)
    averaged = _fitted(tmp_path / "ema", data, 8, ema_decay=0.9)
    assert same_weights(plain.model, averaged.model)
    assert not same_weights(averaged.model, averaged.ema.model)


def test_best_holds_the_average_and_a_resumed_run_continues_it_exactly(tmp_path, data) -> None:
    val = TrainData(data.images[:1], data.labels[:1])

    def trainer(out, steps):
        torch.manual_seed(0)
        config = TrainConfig(steps=steps, tile=100, lr=0.01, warmup_steps=5, val_every=0, checkpoint_every=4,
                             log_every=1, device="cpu", ema_decay=0.9, select_metric="pixel_error")  # fmt: skip
        return Trainer(UNet(CONFIG), data, config, out, val=val, progress=False)

    straight = trainer(tmp_path / "a", 8)
    straight.fit()
    trainer(tmp_path / "b", 4).fit()
    resumed = trainer(tmp_path / "b", 8)
    resumed.fit(resume=True)
    assert resumed.ema.updates == straight.ema.updates == 8
    assert same_weights(straight.ema.model, resumed.ema.model)
    best = load_checkpoint(tmp_path / "a" / "best.safetensors")  # one validation, at the end: the average then
    assert best.metadata["step"] == 8 and best.metadata["train_config"]["ema_decay"] == 0.9
    kept, raw, saved = straight.ema.model.state_dict(), straight.model.state_dict(), best.model.state_dict()
    assert all(torch.equal(saved[k], kept[k]) for k in kept)
    assert not all(torch.equal(saved[k], raw[k]) for k in raw)
    last = load_checkpoint(tmp_path / "a" / "last.safetensors")  # the raw weights, for resuming
    assert all(torch.equal(last.model.state_dict()[k], raw[k]) for k in raw) and "ema.updates" in last.extra
