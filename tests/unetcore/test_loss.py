"""The energy E = −Σ w log p_ℓ: sign, weighting, and the output-window crop."""

from __future__ import annotations

import math

import pytest
import torch

from unetcore.loss import crop_center, weighted_cross_entropy


def test_sign_positive_and_decreasing_towards_the_truth() -> None:
    labels = torch.tensor([[[1, 0], [0, 1]]])
    right = torch.zeros(1, 2, 2, 2)
    right[:, 1] = labels * 4.0
    right[:, 0] = (1 - labels) * 4.0
    losses = [weighted_cross_entropy(right * s, labels).item() for s in (0.0, 0.5, 1.0, 2.0)]
    assert losses[0] == pytest.approx(math.log(2))  # uniform softmax: −log ½
    assert all(a > b > 0 for a, b in zip(losses, losses[1:]))  # a minus sign: lower is better
    wrong = weighted_cross_entropy(-right, labels).item()
    assert wrong > losses[0]


def test_hand_computed_value_and_weights() -> None:
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # p(cell) = 3/4
    labels = torch.tensor([[[1]]])
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx(-math.log(0.75))
    w = torch.tensor([[[10.0]]])
    assert weighted_cross_entropy(logits, labels, w).item() == pytest.approx(-10 * math.log(0.75))
    assert weighted_cross_entropy(logits, labels, w, reduction="sum").item() == pytest.approx(-10 * math.log(0.75))


def test_labels_and_weights_cropped_to_the_output_window() -> None:
    logits = torch.randn(2, 2, 4, 6, requires_grad=True)
    labels = torch.randint(0, 2, (2, 8, 10))
    weights = torch.rand(2, 8, 10)
    expected = weighted_cross_entropy(logits, labels[:, 2:6, 2:8], weights[:, 2:6, 2:8])
    assert torch.allclose(weighted_cross_entropy(logits, labels, weights), expected)
    expected.backward()
    assert logits.grad is not None


def test_weight_zero_pixels_do_not_count() -> None:
    logits = torch.randn(1, 2, 3, 3)
    labels = torch.randint(0, 2, (1, 3, 3))
    w = torch.zeros(1, 3, 3)
    assert weighted_cross_entropy(logits, labels, w).item() == 0.0


def test_crop_rejects_odd_or_small_targets() -> None:
    with pytest.raises(ValueError, match="expected a target at least as large"):
        crop_center(torch.zeros(1, 5, 5), (4, 4))
    with pytest.raises(ValueError, match="expected a target at least as large"):
        crop_center(torch.zeros(1, 2, 2), (4, 4))
