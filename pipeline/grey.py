"""Which grey values an input holds, and whether the model can read them as it was trained.

A model learned its normalisation on [0, 1] grey values (uint8 / 255 for the ISBI data).
An input is mapped to [0, 1] by its *grey range*, chosen in this order:

1. the user's (``--grey-range LO HI``, `SegmentConfig.grey_range`);
2. one stored with the volume: ``"grey_range": [lo, hi]`` under ``"emunet"`` or
   ``"emunet_import"`` in the attributes of the array or of its OME-Zarr image group
   (`emunet import --grey-range` writes it);
3. the dtype's: uint8 0–255, uint16 0–65535, float 0–1.

Before anything is written `check_grey` looks at a small sample of the input (the chunks
`pipeline.fingerprint.read_sample` reads on the client, spread evenly over the volume) and

* refuses values outside the range by more than 1 % of its width (a float volume holding
  0–255, a user range that is too small): the output would be nonsense;
* warns when the sample, mapped by the range, is far from the model's training statistics
  (a 12-bit stack in uint16 reads as almost black: "pass --grey-range 0 4095").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

RANGE_SLACK = 0.01  # values this far (× range width) outside the range are refused
FAR_MEAN = 3.0  # warn if |mean − model mean| > FAR_MEAN · model std
FAR_STD = 4.0  # warn if the std differs from the model's by more than this factor


class GreyRangeError(ValueError):
    """Input values outside the grey range that maps them to the model's [0, 1]."""


@dataclass(frozen=True)
class GreyStats:
    """Statistics of raw grey values (a sample of the input)."""

    count: int
    min: float
    max: float
    mean: float
    std: float

    @classmethod
    def of_sample(cls, sample: Mapping[str, np.ndarray | None]) -> GreyStats:
        """The statistics of the readable chunks of a `read_sample` result."""
        parts = [a.ravel() for a in sample.values() if a is not None]
        return cls.of(np.concatenate(parts) if parts else np.empty(0))

    @classmethod
    def of(cls, values: np.ndarray) -> GreyStats:
        """The statistics of the finite values of ``values``."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(int(v.size), float(v.min()), float(v.max()), float(v.mean()), float(v.std()))


def stored_grey_range(volume: Any) -> tuple[float, float] | None:
    """A grey range stored with the volume (array or OME image group attributes), or None."""
    import zarr

    from pipeline.volume import split_url

    candidates: list[Mapping[str, Any]] = [dict(volume.array.attrs)]
    store, path = split_url(volume.url)
    for group_path in dict.fromkeys((path, path.rsplit("/", 1)[0] if "/" in path else "")):
        try:  # the URL's own node when it is an OME image group, and the array's parent group
            candidates.append(dict(zarr.open_group(store=store, path=group_path, mode="r").attrs))
        except Exception:  # an array, or nothing there: not a place for a stored range
            continue
    from unetcore.normalization import check_grey_range

    for attrs in candidates:
        for key in ("emunet", "emunet_import"):
            meta = attrs.get(key)
            if isinstance(meta, Mapping) and meta.get("grey_range") is not None:
                return check_grey_range(tuple(meta["grey_range"]))
    return None


def resolve_grey_range(volume: Any, given: tuple[float, float] | None) -> tuple[tuple[float, float], str]:
    """(grey range, where it came from: "given", "stored" or "dtype"); `volume` may be a
    numpy array (nothing stored with it)."""
    from unetcore.normalization import check_grey_range, default_grey_range

    if given is not None:
        return check_grey_range(given), "given"  # type: ignore[return-value]
    stored = stored_grey_range(volume) if hasattr(volume, "array") else None
    if stored is not None:
        return stored, "stored"
    return default_grey_range(volume.dtype), "dtype"


def _fitting_range(dtype: np.dtype, stats: GreyStats) -> tuple[float, float, str]:
    """A grey range that fits what the sample shows: (lo, hi, a note such as "12-bit data")."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        for bits in (8, 10, 12, 14, 16):
            if stats.max < 2**bits and 2**bits - 1 <= np.iinfo(dtype).max:
                return 0, 2**bits - 1, f"{bits}-bit data" if bits < dtype.itemsize * 8 else ""
    lo, hi = math.floor(stats.min), math.ceil(stats.max)
    if 0 <= lo and hi <= 255 and stats.max > 1:
        lo, hi = 0, 255
    return lo, hi, ""


def _suggestion(dtype: np.dtype, stats: GreyStats) -> str:
    lo, hi, note = _fitting_range(dtype, stats)
    return f"--grey-range {lo:g} {hi:g}" + (f" ({note})" if note else "")


def check_grey(
    dtype: np.dtype, name: str, grey_range: tuple[float, float], source: str, stats: GreyStats, normalization: Any
) -> list[str]:
    """Refuse values outside ``grey_range`` (`GreyRangeError`); warnings for odd statistics.

    ``name`` names the input in messages (a redacted URL or a file name).
    """
    if stats.count == 0:
        return []
    lo, hi = grey_range
    slack = RANGE_SLACK * (hi - lo)
    where = f"the input {name} ({np.dtype(dtype)})"
    if stats.min < lo - slack or stats.max > hi + slack:
        raise GreyRangeError(
            f"expected grey values in [{lo:g}, {hi:g}] (the {source} grey range, mapped to the model's [0, 1]), got "
            f"values in [{stats.min:g}, {stats.max:g}] in a sample of {where}; pass the range the data uses, e.g. "
            f"{_suggestion(dtype, stats)}, or store it with the volume (`emunet import --grey-range`)"
        )
    mean = (stats.mean - lo) / (hi - lo)
    std = stats.std / (hi - lo)
    m, s = normalization.mean, normalization.std
    if abs(mean - m) > FAR_MEAN * s or std * FAR_STD < s or std > FAR_STD * s:
        fit_lo, fit_hi, _ = _fitting_range(dtype, stats)
        advice = (f"if the data uses less than the full range, pass {_suggestion(dtype, stats)}"
                  if (fit_lo, fit_hi) != (lo, hi) else
                  "that range already fits the data, so the image itself differs (blank, saturated, or another "
                  "modality?): check the input")
        return [
            f"the grey values of {where}, mapped by the {source} grey range [{lo:g}, {hi:g}], have mean {mean:.3f} and "
            f"std {std:.3f}, far from the model's training data (mean {m:.3f}, std {s:.3f}): the result may be "
            f"poor. The sample spans [{stats.min:g}, {stats.max:g}]; {advice}"
        ]
    return []


__all__ = ["GreyRangeError", "GreyStats", "check_grey", "resolve_grey_range", "stored_grey_range"]
