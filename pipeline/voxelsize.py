"""Voxel sizes of imported volumes: read from the source, converted to nm, sanity-checked.

Where a source states its voxel size, `emunet import` takes it from there (and says so):

============================  ====================================================  =========
source                        read from                                              axes
============================  ====================================================  =========
TIFF (ImageJ)                 XResolution/YResolution (pixels per ``unit``),         z, y, x
                              ``spacing`` (z) and ``unit`` of the ImageJ metadata
TIFF                          XResolution/YResolution + ResolutionUnit (inch, cm)    y, x
HDF5 dataset                  ``resolution`` (z, y, x; ``unit``/``units`` attribute, z, y, x
                              else nm) or ``element_size_um`` (z, y, x in µm)
N5 dataset                    ``resolution`` (x first; ``units``, else nm) or         z, y, x
                              ``pixelResolution`` {``dimensions``, ``unit``}
============================  ====================================================  =========

A source that gives only y and x (a TIFF without ImageJ metadata) gets z = the xy size,
with a warning. `plausibility_warnings` flags what is unlikely for EM: a voxel under
0.1 nm or over 10 µm, values that look like micrometres (``0.05 0.004 0.004`` → "did you
mean 50,4,4 nm?"), and a z thinner than half the pixel size (x y z order given as z y x).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Length units → nanometres (lower-case keys; ImageJ writes "micron" or "\\u00B5m").
UNIT_NM: dict[str, float] = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "\\u00b5m": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6, "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9, "a": 0.1, "å": 0.1, "angstrom": 0.1, "ångström": 0.1,
}
SMALLEST_NM = 0.1  # below: no EM voxel is this small
LARGEST_NM = 10_000.0  # above (10 µm): not EM


@dataclass(frozen=True)
class VoxelSize:
    """A voxel size (z, y, x) in nm, where it came from, and notes on how it was read."""

    nm: tuple[float, float, float]
    origin: str  # e.g. "TIFF ImageJ metadata (spacing, unit 'um')", "--voxel-size", "default"
    notes: tuple[str, ...] = field(default_factory=tuple)


def unit_to_nm(unit: Any) -> float | None:
    """nm per ``unit`` ("um", "micron", "nm", …), or None for no or an unknown unit ("pixel")."""
    if not isinstance(unit, str):
        return None
    return UNIT_NM.get(unit.strip().lower())


def parse_voxel_size_text(text: str) -> tuple[float, float, float]:
    """``"50,4,4"`` or ``"50 4 4"`` → (50.0, 4.0, 4.0); a clear error for anything else."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"expected a voxel size of 3 numbers in nm as Z,Y,X (e.g. --voxel-size 50,4,4 or --voxel-size 50 4 4), got {text!r}")
    return values  # type: ignore[return-value]


def check_voxel_size(values: Sequence[float]) -> tuple[float, float, float]:
    """Three finite positive numbers, or an error that shows the right form."""
    import math

    voxel = tuple(float(v) for v in values)
    if len(voxel) != 3 or any(not math.isfinite(v) or v <= 0 for v in voxel):
        raise ValueError(f"expected 3 positive voxel sizes in nm as Z,Y,X (e.g. --voxel-size 50,4,4), got {tuple(values)}")
    return voxel  # type: ignore[return-value]


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:.6g}" for v in values)


def plausibility_warnings(voxel_nm: Sequence[float], origin: str) -> list[str]:
    """Warnings for a voxel size (z, y, x nm) unlikely for EM; empty when it looks right."""
    z, y, x = (float(v) for v in voxel_nm)
    shown = f"voxel size {_fmt(voxel_nm)} nm (z,y,x, from {origin})"
    out: list[str] = []
    if max(z, y, x) < 1.0 and all(SMALLEST_NM <= v * 1e3 <= LARGEST_NM for v in (z, y, x)):
        out.append(
            f"got {shown}: below 1 nm on every axis, which looks like micrometres. Did you mean nm? "
            f"--voxel-size {_fmt([v * 1e3 for v in (z, y, x)])}"
        )
    elif min(z, y, x) < SMALLEST_NM or max(z, y, x) > LARGEST_NM:
        out.append(
            f"got {shown}: outside {SMALLEST_NM}–{LARGEST_NM:g} nm, implausible for EM; "
            "check the unit (nm) and pass --voxel-size Z,Y,X"
        )
    if z < max(y, x) / 2:
        out.append(
            f"got {shown}: z is less than half the pixel size, unusual for EM sections. The order is "
            f"z,y,x; if you gave x,y,z, that is --voxel-size {_fmt((x, y, z))}"
        )
    elif max(y, x) > 2 * min(y, x):
        out.append(f"got {shown}: y and x differ by more than 2×; check the order (z,y,x)")
    return out


def _positive(values: Sequence[Any]) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out if out and all(v > 0 and v == v and v != float("inf") for v in out) else None


def _xy_from_tags(page: Any) -> tuple[float, float] | None:
    """Pixel size (y, x) in the tag's own unit: 1 / (pixels per unit)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    try:
        xnum, xden = tags["XResolution"].value
        ynum, yden = tags["YResolution"].value
    except (TypeError, ValueError):
        return None
    if not (xnum and ynum and xden and yden):
        return None
    return yden / ynum, xden / xnum


def tiff_voxel_size(tif: Any) -> VoxelSize | None:
    """The voxel size a TIFF states (ImageJ metadata, else the resolution tags), or None."""
    page = tif.pages[0]
    xy = _xy_from_tags(page)
    ij = tif.imagej_metadata or {}
    ij_unit = unit_to_nm(ij.get("unit"))
    if ij_unit is not None and xy is not None:
        y, x = (v * ij_unit for v in xy)
        spacing = _positive([ij["spacing"]]) if "spacing" in ij else None
        if spacing is not None:
            return VoxelSize((spacing[0] * ij_unit, y, x), f"TIFF ImageJ metadata (resolution, spacing, unit {ij['unit']!r})")
        return VoxelSize((x, y, x), f"TIFF ImageJ metadata (resolution, unit {ij['unit']!r})", ("the TIFF gives no z spacing: z taken = x",))
    if xy is None or "ResolutionUnit" not in page.tags:
        return None
    unit = int(page.tags["ResolutionUnit"].value)
    per_unit = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}.get(unit)  # inch, cm (+ tifffile's mm, µm)
    if per_unit is None:  # NONE: no absolute unit
        return None
    y, x = (v * per_unit for v in xy)
    if max(y, x) > LARGEST_NM:  # 72/96/300 dpi: a writer's default, not a measurement
        return None
    return VoxelSize((x, y, x), "TIFF resolution tags (XResolution, YResolution, ResolutionUnit)", ("the TIFF gives no z spacing: z taken = x",))


def _attr_unit(attrs: Mapping[str, Any]) -> tuple[float, str | None]:
    """nm per unit of an attribute set's ``unit``/``units`` (one or per axis), default nm."""
    unit = attrs.get("unit", attrs.get("units"))
    if isinstance(unit, (list, tuple)) and unit and all(u == unit[0] for u in unit):
        unit = unit[0]
    if isinstance(unit, bytes):
        unit = unit.decode(errors="replace")
    if unit is None:
        return 1.0, None
    factor = unit_to_nm(unit)
    if factor is None:
        raise ValueError(f"expected a length unit (nm, um, …) in the source's unit attribute, got {unit!r}; pass --voxel-size Z,Y,X (nm)")
    return factor, str(unit)


def hdf5_voxel_size(attrs: Mapping[str, Any], what: str) -> VoxelSize | None:
    """``resolution`` (z, y, x; unit attribute, else nm) or ``element_size_um`` of a dataset."""
    if "resolution" in attrs:
        values = _positive(list(attrs["resolution"]))
        if values is not None and len(values) == 3:
            factor, unit = _attr_unit(attrs)
            notes = () if unit else ("the resolution attribute states no unit: taken as nm",)
            return VoxelSize(tuple(v * factor for v in values), f"{what} attribute 'resolution'" + (f" (unit {unit!r})" if unit else ""), notes)  # type: ignore[arg-type]
    if "element_size_um" in attrs:
        values = _positive(list(attrs["element_size_um"]))
        if values is not None and len(values) == 3:
            return VoxelSize(tuple(v * 1e3 for v in values), f"{what} attribute 'element_size_um'")  # type: ignore[arg-type]
    return None


def n5_voxel_size(values_zyx: Sequence[float] | None, unit: str | None, origin: str) -> VoxelSize | None:
    """An N5 dataset's resolution (already in z, y, x order) and its unit (None: nm)."""
    values = _positive(list(values_zyx)) if values_zyx is not None else None
    if values is None or len(values) != 3:
        return None
    factor = unit_to_nm(unit) if unit is not None else 1.0
    if factor is None:
        raise ValueError(f"expected a length unit (nm, um, …) in the N5 {origin}, got {unit!r}; pass --voxel-size Z,Y,X (nm)")
    notes = () if unit is not None else (f"the N5 {origin} states no unit: taken as nm",)
    shown = f"N5 attribute '{origin}'" + (f" (unit {unit!r})" if unit is not None else "")
    return VoxelSize(tuple(v * factor for v in values), shown, notes)  # type: ignore[arg-type]


__all__ = [
    "VoxelSize",
    "check_voxel_size",
    "hdf5_voxel_size",
    "n5_voxel_size",
    "parse_voxel_size_text",
    "plausibility_warnings",
    "tiff_voxel_size",
    "unit_to_nm",
]
