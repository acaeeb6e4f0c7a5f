"""Threshold sweeps and strict binarisation, exactly as the ISBI 2012 Java code does them.

The Fiji metric classes loop ``for (double th = min; th <= max; th += step)``: the
thresholds are produced by *repeated addition* of 0.1 in double precision, not by
``k * 0.1`` or ``np.linspace``. The values therefore are

    0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7,
    0.7999999999999999, 0.8999999999999999, 0.9999999999999999

(11 values for the 0..1 sweep; the 0..0.9 sweep stops after 0.8999999999999999, 10
values, because 0.9999999999999999 > 0.9). **(parity)**

A proposal pixel is "cell" when ``value > th`` (strict), compared in float64: with
NumPy 2, ``float32_array > 0.30000000000000004`` casts the Python float to float32
(0.3f) and moves every pixel equal to float32(0.3). :func:`binarize` therefore casts the
proposal to float64 first, which is also what Java does (``float`` promoted to
``double`` in ``getPixelValue(x, y) > binaryThreshold``). **(parity)**
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "JAVA_STEP",
    "THRESHOLDS_0_1",
    "THRESHOLDS_0_09",
    "binarize",
    "java_thresholds",
]

#: The step the challenge scripts pass to every sweep.
JAVA_STEP = 0.1


def java_thresholds(start: float = 0.0, stop: float = 1.0, step: float = JAVA_STEP) -> tuple[float, ...]:
    """Thresholds ``start, start+step, ...`` while ``<= stop``, by repeated float addition.

    This reproduces ``for (double th = start; th <= stop; th += step)`` bit for bit.
    """
    if not (np.isfinite(start) and np.isfinite(stop) and np.isfinite(step)):
        raise ValueError(f"expected finite start/stop/step, got {start!r}, {stop!r}, {step!r}")
    if step <= 0:
        raise ValueError(f"expected a positive step, got {step!r}")
    if start > stop:
        raise ValueError(f"expected start <= stop, got start={start!r} > stop={stop!r}")
    out: list[float] = []
    th = float(start)
    while th <= stop:
        out.append(th)
        th += step
    return tuple(out)


#: Sweep used by pixel error, V_rand, V_info and the 2012 Rand error (11 values).
THRESHOLDS_0_1: tuple[float, ...] = java_thresholds(0.0, 1.0, JAVA_STEP)
#: Sweep used by the leaderboard warping error (10 values, last one 0.8999999999999999).
THRESHOLDS_0_09: tuple[float, ...] = java_thresholds(0.0, 0.9, JAVA_STEP)


def binarize(proposal: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean cell mask ``proposal > threshold`` computed in float64 (strict comparison)."""
    values = np.asarray(proposal)
    if values.dtype != np.float64:
        values = values.astype(np.float64)
    return values > np.float64(threshold)
