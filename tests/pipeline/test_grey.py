"""`pipeline.grey.check_grey`: the warning's advice fits the case (a range to pass, or the data)."""

from __future__ import annotations

import numpy as np

from pipeline.grey import GreyStats, check_grey
from unetcore.normalization import Normalization

NORM = Normalization(mean=0.5, std=0.2)


def _warn(values: np.ndarray, grey_range: tuple[float, float]) -> str:
    (warning,) = check_grey(values.dtype, "in.zarr", grey_range, "dtype", GreyStats.of(values), NORM)
    return warning


def test_a_dark_12_bit_volume_is_told_its_range() -> None:
    twelve = np.random.default_rng(0).integers(0, 4096, (3, 17, 19)).astype(np.uint16)
    assert "pass --grey-range 0 4095 (12-bit data)" in _warn(twelve, (0, 65535))


def test_a_blank_image_in_the_right_range_is_not_told_the_range_it_has() -> None:
    """A constant uint8 image: "--grey-range 0 255" would change nothing; the data is the problem."""
    for value in (0, 255, 7):
        text = _warn(np.full((2, 9, 11), value, np.uint8), (0, 255))
        assert "--grey-range" not in text and "already fits the data" in text and "check the input" in text, text


def test_typical_em_gives_no_warning() -> None:
    em = np.clip(np.random.default_rng(1).normal(0.5 * 255, 0.2 * 255, (2, 31, 29)), 0, 255).astype(np.uint8)
    assert check_grey(em.dtype, "in.zarr", (0, 255), "dtype", GreyStats.of(em), NORM) == []
