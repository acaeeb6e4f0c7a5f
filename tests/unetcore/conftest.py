"""Fixtures of the unetcore tests: three small synthetic EM images with labels and weight maps."""

from __future__ import annotations

import numpy as np
import pytest

from unetcore.synthetic import synthetic_em_2d
from unetcore.trainer import TrainData
from unetcore.weightmap import border_weight_map


@pytest.fixture(scope="module")
def data() -> TrainData:
    """96 × 96 synthetic images (seeds 0–2), cell labels and their border weight maps."""
    images, labels, weights = [], [], []
    for seed in range(3):
        em = synthetic_em_2d((96, 96), seed=seed)
        images.append(em.image)
        labels.append((em.labels > 0).astype(np.int64))
        weights.append(border_weight_map(em.labels, instances=True))
    return TrainData(images, labels, weights)
