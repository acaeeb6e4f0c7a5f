"""One driver for the ISBI 2012 metrics of a stack: :func:`evaluate_stack`.

``evaluate_stack(pred, gt)`` validates the inputs (:mod:`.inputs`), maps the pure
per-slice sweep :func:`.sweep.slice_counts` over the slices and reduces the counts with
:func:`reduce_counts`:

* ``pixel_error``: 1 − max F of the pixel TP/FP/FN summed over slices (0..1);
* ``rand_error`` = 1 − ``v_rand``: thinned foreground-restricted Rand F, macro-averaged
  over slices, max over 0..1 (threshold 0 only for a binary proposal);
* ``info_error`` = 1 − ``v_info``: same for the information-theoretic F;
* ``rand_error_2012``: unthinned foreground-restricted Rand, pair counts summed over
  slices (micro), max over 0..1;
* ``warping_error``: leaderboard warping error, min over 0..0.9 of (split + merge
  pixels summed over slices) / (W·H·Z);
* ``warping_error_jain``: classic warping error at 0.5, remaining mismatches / (W·H)
  averaged over slices.

The ``*_threshold`` keys give the threshold of each optimum (the first one when tied,
as the Java loops do). With ``curves=True`` the value at every threshold is added under
``"curves"``. A Dask layer can call :func:`.sweep.slice_counts` per slice and
:func:`reduce_counts` on the gathered results instead of this driver.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .contingency import PairStats
from .info import vinfo_f
from .inputs import is_binary, validate_pair
from .pixel import best_of, f_score, pixel_error
from .rand import rand2012_counts, vrand_f
from .sweep import JAIN_THRESHOLD, SliceCounts, slice_counts
from .thresholds import THRESHOLDS_0_1, THRESHOLDS_0_09
from .warping import DEFAULT_RADIUS, leaderboard_error

__all__ = ["evaluate_stack", "reduce_counts"]


def _stats(counts: np.ndarray, entropy: np.ndarray | None) -> PairStats:
    n, c2, a2, b2, s = (int(v) for v in counts)
    h = (0.0, 0.0, 0.0) if entropy is None else tuple(float(v) for v in entropy)
    return PairStats(n, c2, a2, b2, s, *h)


def _macro(per_slice: list[list[float]]) -> np.ndarray:
    """Mean over slices of per-slice scores ``[slice][threshold]`` (NaN propagates)."""
    return np.mean(np.asarray(per_slice, dtype=np.float64), axis=0)


def _check_consistent(counts: Sequence[SliceCounts]) -> None:
    if not counts:
        raise ValueError("expected at least one slice of counts, got none")
    first = counts[0]
    for c in counts[1:]:
        if c.shape != first.shape or c.thresholds != first.thresholds or c.warp_thresholds != first.warp_thresholds:
            raise ValueError(
                f"expected slices with equal shape and thresholds, got {first.shape} / {c.shape}"
            )


def reduce_counts(counts: Sequence[SliceCounts], *, binary: bool = False, curves: bool = False) -> dict[str, Any]:
    """Reduce per-slice counts (from :func:`.sweep.slice_counts`) to the stack metrics."""
    _check_consistent(counts)
    ths = counts[0].thresholds
    wths = counts[0].warp_thresholds
    height, width = counts[0].shape
    n_slices = len(counts)

    pixel_err, pixel_k, pixel_f = pixel_error(np.sum([c.pixel for c in counts], axis=0))

    # V_rand / V_info: per-slice F, macro average; binary proposals use threshold 0 only
    n_rand = 1 if binary else len(ths)
    vrand = _macro([[vrand_f(_stats(c.thinned[k], None)) for k in range(n_rand)] for c in counts])
    vinfo = _macro([[vinfo_f(_stats(c.thinned[k], c.thinned_entropy[k])) for k in range(n_rand)] for c in counts])
    v_rand, rand_k = best_of(vrand)
    v_info, info_k = best_of(vinfo)

    # 2012 Rand: pair counts summed over slices (micro)
    pairs = np.zeros((len(ths), 3), dtype=np.float64)
    for c in counts:
        for k in range(len(ths)):
            pairs[k] += rand2012_counts(_stats(c.plain[k], None))
    f2012 = np.array([f_score(*row) for row in pairs])
    best2012, k2012 = best_of(f2012)

    warp = np.sum([c.warp for c in counts], axis=0)
    split_merge = warp[:, 1] + warp[:, 2]
    warping_err, warp_k = leaderboard_error(split_merge, width * height * n_slices)
    jain = float(np.mean([c.jain_remaining / float(width * height) for c in counts]))

    result: dict[str, Any] = {
        "pixel_error": pixel_err,
        "rand_error": 1.0 - v_rand,
        "info_error": 1.0 - v_info,
        "rand_error_2012": 1.0 - best2012,
        "warping_error": warping_err,
        "warping_error_jain": jain,
        "v_rand": v_rand,
        "v_info": v_info,
        "pixel_threshold": ths[pixel_k],
        "rand_threshold": ths[rand_k],
        "info_threshold": ths[info_k],
        "rand_2012_threshold": ths[k2012],
        "warping_threshold": wths[warp_k],
        "warping_splits": int(warp[warp_k, 2]),
        "warping_merges": int(warp[warp_k, 1]),
        "jain_threshold": JAIN_THRESHOLD,
        "n_slices": n_slices,
        "height": height,
        "width": width,
        "binary_proposal": bool(binary),
    }
    if curves:
        jain_curve = np.mean([c.warp[:, 0] / float(width * height) for c in counts], axis=0)
        result["curves"] = {
            "pixel_error": {"thresholds": list(ths), "values": (1.0 - pixel_f).tolist()},
            "rand_error": {"thresholds": list(ths[:n_rand]), "values": (1.0 - vrand).tolist()},
            "info_error": {"thresholds": list(ths[:n_rand]), "values": (1.0 - vinfo).tolist()},
            "rand_error_2012": {"thresholds": list(ths), "values": (1.0 - f2012).tolist()},
            "warping_error": {
                "thresholds": list(wths),
                "values": (split_merge / float(width * height * n_slices)).tolist(),
                "splits": warp[:, 2].tolist(),
                "merges": warp[:, 1].tolist(),
            },
            "warping_error_jain": {"thresholds": list(wths), "values": jain_curve.tolist()},
        }
    return result


def evaluate_stack(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    curves: bool = False,
    workers: int | None = None,
    radius: int = DEFAULT_RADIUS,
) -> dict[str, Any]:
    """ISBI 2012 metrics of a proposal stack against its GT (see module docstring).

    ``pred``: cell probability, float in ``[0, 1]``, uint8 (/255), uint16 (/65535) or a
    binary map; ``gt``: 0 = membrane, > 0 = cell. Both ``(Y, X)`` or ``(Z, Y, X)`` of the
    same shape. ``workers``: threads over slices (default: the CPU count, at most the
    number of slices); the compiled kernels release the GIL.
    """
    prop, cells = validate_pair(pred, gt)
    if not cells.any():
        warnings.warn(
            "the ground truth is all membrane (every label 0): every metric compares against an empty cell set; "
            "check that GT is the label image (0 = membrane, > 0 = cell)",
            UserWarning,
            stacklevel=2,
        )
    elif cells.all():
        warnings.warn(
            "the ground truth has no membrane (no label 0): the Rand and information scores of one cell per slice are "
            "perfect for any proposal; check that GT is the label image (0 = membrane, > 0 = cell), not the EM image",
            UserWarning,
            stacklevel=2,
        )
    binary = is_binary(prop)
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        raise ValueError(f"expected workers >= 1, got {n_workers}")
    n_workers = min(n_workers, prop.shape[0])

    def one(z: int) -> SliceCounts:
        return slice_counts(cells[z], prop[z], thresholds=THRESHOLDS_0_1,
                            warp_thresholds=THRESHOLDS_0_09, radius=radius)

    if n_workers == 1:
        counts = [one(z) for z in range(prop.shape[0])]
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            counts = list(pool.map(one, range(prop.shape[0])))
    return reduce_counts(counts, binary=binary, curves=curves)
