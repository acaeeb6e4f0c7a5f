"""OME-NGFF metadata and axis names: multiscale levels, their scale in nm, and which stored
axis is z, y or x."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.urls import redact_url
from pipeline.volume_errors import NotAZarrError, UnsupportedVolumeError

DEFAULT_AXES: tuple[str, str, str] = ("z", "y", "x")
SPATIAL_AXES = frozenset(DEFAULT_AXES)
# Length units of NGFF axes, as factors to nanometres.
UNIT_TO_NM: dict[str, float] = {
    "angstrom": 0.1,
    "picometer": 1e-3,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
    "nm": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "micron": 1e3,
}


def multiscales_of(attrs: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The NGFF ``multiscales`` list of a group's attributes (0.4 top level or 0.5 ``ome``).

    Each entry must be an object whose ``datasets`` is a list of objects with a ``path``
    (`NotAZarrError` otherwise, naming what was found).
    """
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        found = ome["multiscales"]
    elif "multiscales" in attrs:
        found = attrs["multiscales"]
    else:
        return None
    valid = isinstance(found, list) and all(
        isinstance(m, Mapping) and isinstance(m.get("datasets"), list)
        and all(isinstance(d, Mapping) and "path" in d for d in m["datasets"])
        for m in found
    )  # fmt: skip
    if not valid:
        raise NotAZarrError(
            "expected OME multiscales as a list of objects, each with datasets [{\"path\": …}, …], got "
            f"{json.dumps(found, default=str)[:120]}; fix the image's metadata (NGFF 0.4/0.5)"
        )
    return list(found)


def _scale_of(transforms: Any, ndim: int) -> tuple[float, ...]:
    scale = [1.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            values = [float(v) for v in t["scale"]]
            if len(values) != ndim:
                raise NotAZarrError(
                    f"expected a scale of {ndim} values in the OME metadata, got {values}"
                )
            scale = [a * b for a, b in zip(scale, values, strict=True)]
    return tuple(scale)


def ome_level(multiscale: Mapping[str, Any], level: int) -> tuple[str, tuple[str, ...], tuple[float, ...]]:
    """(dataset path, axis names, voxel size in nm) of one level of a multiscale image."""
    datasets = multiscale.get("datasets") or []
    if not 0 <= level < len(datasets):
        raise ValueError(
            f"expected a multiscale level in 0..{len(datasets) - 1}, got {level}; "
            f"levels: {[d.get('path') for d in datasets]}"
        )
    axes_meta = multiscale.get("axes") or [{"name": a} for a in DEFAULT_AXES]
    axes = tuple(a["name"] if isinstance(a, Mapping) else str(a) for a in axes_meta)
    ndim = len(axes)
    scale = _scale_of(datasets[level].get("coordinateTransformations"), ndim)
    outer = _scale_of(multiscale.get("coordinateTransformations"), ndim)
    units = [a.get("unit") if isinstance(a, Mapping) else None for a in axes_meta]
    types = [a.get("type") if isinstance(a, Mapping) else None for a in axes_meta]
    unknown = [(n, u) for n, u, t in zip(axes, units, types, strict=True) if u and t in (None, "space") and u not in UNIT_TO_NM]
    if unknown:
        raise NotAZarrError(
            f"expected OME axis units of length ({', '.join(sorted(set(UNIT_TO_NM)))}), got {unknown}; fix the "
            "image's multiscales metadata"
        )
    factors = [UNIT_TO_NM.get(u, 1.0) if u and t in (None, "space") else 1.0 for u, t in zip(units, types, strict=True)]
    voxel = tuple(s * o * f for s, o, f in zip(scale, outer, factors, strict=True))
    return str(datasets[level]["path"]), axes, voxel


def axis_order(axes: tuple[str, ...] | None, shape: tuple[int, ...], url: str) -> tuple[int, int, int]:
    """The stored index of the z, y and x axes; other axes must have size 1.

    Without axis names (or with names none of which is z, y or x) a 3D array is taken as
    (z, y, x); anything else that lacks one of the three spatial axes is refused.
    """
    names = tuple(str(a).lower() for a in axes) if axes and len(axes) == len(shape) else ()
    where = f"at {redact_url(url)}"
    if not set(names) & SPATIAL_AXES and len(shape) == 3:
        return (0, 1, 2)
    if not set(names) & SPATIAL_AXES or (len(shape) != 3 and set(names) <= SPATIAL_AXES):
        raise UnsupportedVolumeError(
            f"expected a 3D (z, y, x) volume {where}, got {len(shape)}D shape {shape} (axes {axes or 'unnamed'}); "
            "select a 3D array, or squeeze/re-import it with `emunet import`"
        )
    if not SPATIAL_AXES <= set(names) or len(set(names)) != len(names):
        raise UnsupportedVolumeError(
            f"expected the spatial axes z, y and x once each {where}, got axes {tuple(axes or ())} of shape {shape}; "
            "a (c, y, x) image is one 2D plane with channels: re-import it as a (z, y, x) volume"
        )
    extra = [(n, s) for n, s in zip(names, shape, strict=True) if n not in SPATIAL_AXES and s != 1]
    if extra:
        raise UnsupportedVolumeError(
            f"expected one grey channel (axes z, y, x, others of size 1) {where}, got axes {tuple(axes or ())} of shape "
            f"{shape} ({', '.join(f'{n}: {s}' for n, s in extra)}); select one channel/time point and re-import it"
        )
    return tuple(names.index(a) for a in DEFAULT_AXES)  # type: ignore[return-value]


__all__ = ["DEFAULT_AXES", "SPATIAL_AXES", "UNIT_TO_NM", "axis_order", "multiscales_of", "ome_level"]
