"""Opening EM volumes: Zarr v2/v3 arrays and OME-Zarr multiscale images, local or remote.

A volume is named by one URL string:

* a local path or ``file://`` URL: ``/data/fib.zarr``, ``file:///data/fib.zarr``;
* any fsspec URL, e.g. ``s3://bucket/fib.zarr`` (credentials go in ``storage_options``,
  never in the URL, and are never stored or logged);
* an array inside a group: ``store.zarr/path/to/array`` or ``store.zarr:path/to/array``;
* an OME-Zarr multiscale image (a group with ``multiscales`` metadata, NGFF 0.4 at the top
  level of the attributes or 0.5 under ``ome``): the level is chosen with ``level``
  (default 0, the full resolution) and the voxel size is read from its ``scale``.

Only 3D (z, y, x) volumes of uint8, uint16 or float32 are accepted; anything else is refused
at the boundary with "expected X, got Y" and the fix. Axis names (OME ``axes``, Zarr v3
``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``) are read: spatial axes stored in
another order (x, y, z) are read transposed to (z, y, x) with their scale, singleton
channel or time axes are dropped, and a real channel axis (c, y, x) is refused.

A chunk missing from the store inside the array's extent reads as the fill value in Zarr;
here it is an error naming the chunk (`MissingChunkError`), unless the volume is opened with
``sparse=True`` (chunks left out on purpose). Only regions that read as all fill value are
looked up, so a dense volume costs no extra requests.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.geometry import Roi
# Re-exported: the URL helpers, OME readers and errors are imported from here across the project.
from pipeline.ome import DEFAULT_AXES, SPATIAL_AXES, UNIT_TO_NM, axis_order, multiscales_of, ome_level  # noqa: F401
from pipeline.urls import fsspec_filesystem, is_remote, join_url, local_path, redact_url, split_url  # noqa: F401
from pipeline.volume_errors import MissingChunkError, NotAZarrError, UnsupportedVolumeError, VolumeNotFoundError  # noqa: F401

SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "float32")
LABEL_DTYPES: tuple[str, ...] = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")



# --------------------------------------------------------------------------- the value


@dataclass(frozen=True)
class Volume:
    """An opened 3D volume: where it lives, its array and the facts about it.

    ``voxel_size`` is in nanometres per (z, y, x) voxel; ``voxel_size_source`` says where
    it came from ("ome" metadata, a "resolution" attribute, or "default" = 1 nm).
    """

    url: str  # the URL as given (credential-free: storage_options are never kept)
    array: Any = field(repr=False, compare=False)  # the zarr.Array (read-only)
    shape: tuple[int, int, int]  # (z, y, x), whatever the stored order
    dtype: np.dtype
    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None
    voxel_size: tuple[float, float, float]
    axes: tuple[str, ...]  # the stored axes, e.g. ("z", "y", "x") or ("c", "x", "y", "z")
    zarr_format: int
    level: int | None = None  # the multiscale level, None for a plain array
    voxel_size_source: str = "default"
    order: tuple[int, int, int] = (0, 1, 2)  # stored axis index of z, y and x
    sparse: bool = False  # missing chunks read as the fill value (else MissingChunkError)

    @property
    def total_roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` (which must lie inside the volume), as (z, y, x)."""
        if not self.total_roi.contains(roi):
            raise ValueError(f"expected a ROI inside the volume {self.total_roi}, got {roi}")
        zyx = roi.to_slices()
        index: list[Any] = [0] * self.array.ndim  # singleton channel/time axes
        for axis, stored in enumerate(self.order):
            index[stored] = zyx[axis]
        data = np.asarray(self.array[tuple(index)])
        if not self.sparse:
            self._check_chunks(roi, data)
        if self.order != (0, 1, 2):
            ranked = sorted(self.order)
            data = data.transpose([ranked.index(o) for o in self.order])
        return data

    def _check_chunks(self, roi: Roi, data: np.ndarray) -> None:
        """Raise `MissingChunkError` for a stored chunk (or shard) of ``roi`` that is absent.

        ``data`` is in the stored axis order; only the chunks whose voxels here all equal
        the fill value are looked up in the store.
        """
        from zarr.core.sync import sync

        fill = self.array.fill_value
        unit = self.array.shards or self.array.chunks  # what the store holds: shards or chunks
        stored_unit = tuple(unit[o] for o in self.order)  # along z, y, x
        ranked = sorted(self.order)
        ranges = [range(lo // u, -(-hi // u)) for lo, hi, u in zip(roi.offset, roi.end, stored_unit, strict=True)]
        for grid in itertools.product(*ranges):
            lo = [max(g * u, o) for g, u, o in zip(grid, stored_unit, roi.offset, strict=True)]
            hi = [min((g + 1) * u, e) for g, u, e in zip(grid, stored_unit, roi.end, strict=True)]
            local = [slice(a - o, b - o) for a, b, o in zip(lo, hi, roi.offset, strict=True)]
            region = data[tuple(local[self.order.index(s)] for s in ranked)]
            empty = np.isnan(region).all() if fill is None or (isinstance(fill, float) and np.isnan(fill)) else (region == fill).all()
            if not empty:
                continue
            coords = [0] * self.array.ndim
            for axis, stored in enumerate(self.order):
                coords[stored] = grid[axis]
            key = self.array.metadata.encode_chunk_key(tuple(coords))
            path = f"{self.array.path}/{key}" if self.array.path else key
            if not sync(self.array.store.exists(path)):
                span = ", ".join(f"{a} {b}:{c}" for a, b, c in zip(DEFAULT_AXES, lo, hi, strict=True))
                raise MissingChunkError(
                    f"expected every chunk of {redact_url(self.url)} inside its extent {self.shape}, got chunk "
                    f"{tuple(coords)} (key {key!r}, voxels {span}) missing from the store: a partial copy or an "
                    "enlarged shape? Copy the missing chunks; if chunks were left out on purpose (a sparse "
                    "volume, or one written with write_empty_chunks=False) pass --sparse (sparse=True) to read "
                    "them as the fill value"
                )


# --------------------------------------------------------------------------- opening


def _open_node(store_url: str, path: str, storage_options: Mapping[str, Any] | None, url: str):
    import zarr

    remote = is_remote(store_url)
    if not remote and not Path(store_url).exists():
        raise VolumeNotFoundError(
            f"expected a Zarr volume at {url}, got no such path ({Path(store_url).absolute()}); "
            "check the path, or import a TIFF/HDF5/N5 file first with `emunet import`"
        )
    try:
        return zarr.open(
            store=store_url,
            path=path,
            mode="r",
            storage_options=dict(storage_options) if remote and storage_options else None,
        )
    except FileNotFoundError as exc:
        where = join_url(store_url, path)
        if not remote and Path(local_path(where)).exists():
            raise NotAZarrError(
                f"expected a Zarr array or group at {url}, got a path without Zarr metadata "
                f"(no zarr.json, .zarray or .zgroup); import it with `emunet import` ({exc})"
            ) from None
        raise VolumeNotFoundError(
            f"expected a Zarr volume at {redact_url(url)}, got nothing there "
            f"(store {redact_url(store_url)}, path {path!r})"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError and zarr's metadata errors
        where = join_url(store_url, path)
        names = [n for n in ("zarr.json", ".zarray", ".zgroup", ".zattrs") if not remote and Path(where, n).is_file()]
        named = join_url(where, names[0]) if names else f"{where} (zarr.json, .zarray, .zgroup)"
        raise NotAZarrError(
            f"expected readable Zarr metadata at {redact_url(named)}, got: {exc}; the metadata file is truncated or "
            "was edited by hand: restore it from the original"
        ) from None


def _array_names(group: Any) -> list[str]:
    try:
        return sorted(str(k) for k in group.array_keys())
    except Exception:  # pragma: no cover - listing unsupported by the store
        return []


def _attrs(node: Any) -> dict[str, Any]:
    return dict(node.attrs.asdict()) if hasattr(node.attrs, "asdict") else dict(node.attrs)


def _parent_voxel_size(
    store_url: str, path: str, storage_options: Mapping[str, Any] | None
) -> tuple[tuple[str, ...], tuple[float, ...], int] | None:
    """Axes, voxel size and level from the parent group's multiscales, if it lists `path`."""
    import zarr

    if "/" in path:
        parent, name = path.rsplit("/", 1)
    elif path:
        parent, name = "", path
    else:
        return None
    try:
        group = zarr.open_group(
            store=store_url,
            path=parent,
            mode="r",
            storage_options=dict(storage_options) if is_remote(store_url) and storage_options else None,
        )
    except (FileNotFoundError, ValueError, TypeError):
        return None
    for multiscale in multiscales_of(_attrs(group)) or []:
        for level, ds in enumerate(multiscale.get("datasets") or []):
            if str(ds.get("path")).strip("/") == name:
                _, axes, voxel = ome_level(multiscale, level)
                return axes, voxel, level
    return None


def _check_array(array: Any, url: str, axes: tuple[str, ...], dtypes: tuple[str, ...]) -> None:
    dtype = np.dtype(array.dtype)
    if dtype.name not in dtypes:
        raise UnsupportedVolumeError(
            f"expected a volume of dtype {', '.join(dtypes)}, got {dtype} at "
            f"{redact_url(url)}; convert it (e.g. rescale to uint8) before segmenting"
        )


def open_volume(
    url: str | Path,
    *,
    level: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    dtypes: tuple[str, ...] = SUPPORTED_DTYPES,
    sparse: bool = False,
) -> Volume:
    """Open a 3D EM volume (see the module docstring for the accepted URLs).

    ``level`` selects a multiscale level (default 0) when the URL names an OME-Zarr image.
    ``sparse``: read chunks missing from the store as the fill value instead of raising
    `MissingChunkError`.
    ``dtypes``: the accepted dtypes (label volumes pass `LABEL_DTYPES`).
    Raises `VolumeNotFoundError` (a FileNotFoundError), `NotAZarrError` or
    `UnsupportedVolumeError` (ValueErrors) with the fix in the message.
    """
    import zarr

    url = str(url)
    store_url, path = split_url(url)
    node = _open_node(store_url, path, storage_options, url)
    voxel: tuple[float, ...] | None = None
    axes: tuple[str, ...] | None = None
    source = "default"
    chosen: int | None = None
    if isinstance(node, zarr.Group):
        multiscales = multiscales_of(_attrs(node))
        if not multiscales:
            raise NotAZarrError(
                f"expected a Zarr array or an OME-Zarr multiscale image at {redact_url(url)}, "
                f"got a group without multiscales metadata holding arrays "
                f"{_array_names(node)[:10]}; name one as {redact_url(url)}/NAME"
            )
        chosen = 0 if level is None else int(level)
        ds_path, axes, voxel = ome_level(multiscales[0], chosen)
        try:
            array = node[ds_path]
        except KeyError:
            raise NotAZarrError(
                f"expected the multiscale level {chosen} array {ds_path!r} in {redact_url(url)}, "
                "got nothing there (incomplete OME-Zarr image)"
            ) from None
        # `emunet import` without --voxel-size (and the demo's synthetic images) write 1 nm as a
        # placeholder and say so
        marks = [_attrs(node).get(key) for key in ("emunet_import", "emunet")]
        placeholder = any(isinstance(m, dict) and m.get("voxel_size_from") == "default" for m in marks)
        source = "default" if placeholder else "ome"
    else:
        array = node
        parent = _parent_voxel_size(store_url, path, storage_options)
        if parent is not None:
            axes, voxel, chosen = parent
            source = "ome"
        if level is not None and level != (chosen or 0):
            raise ValueError(
                f"expected a multiscale group for level={level}, got the array of level "
                f"{chosen or 0} at {redact_url(url)}; name the group, or the level's array"
            )
    attrs = _attrs(array)
    if axes is None:
        dims = getattr(array.metadata, "dimension_names", None) or attrs.get("_ARRAY_DIMENSIONS")
        axes = tuple(str(d) for d in dims) if dims and all(dims) else None
    order = axis_order(axes, tuple(int(s) for s in array.shape), url)
    axes = axes if axes and len(axes) == array.ndim else DEFAULT_AXES
    _check_array(array, url, axes, tuple(dtypes))
    if voxel is None and "resolution" in attrs:
        voxel, source = tuple(float(v) for v in attrs["resolution"]), "resolution"
    if voxel is not None and len(voxel) == array.ndim:
        voxel = tuple(voxel[o] for o in order)
    if voxel is None or len(voxel) != 3:
        voxel, source = (1.0, 1.0, 1.0), "default"
    if any(not np.isfinite(v) or v <= 0 for v in voxel):
        raise UnsupportedVolumeError(f"expected positive voxel sizes, got {voxel} at {redact_url(url)}")
    shards = getattr(array, "shards", None)

    def zyx(values: Any) -> tuple[int, int, int]:
        return tuple(int(values[o]) for o in order)  # type: ignore[return-value]

    return Volume(
        url=url,
        array=array,
        shape=zyx(array.shape),
        dtype=np.dtype(array.dtype),
        chunks=zyx(array.chunks),
        shards=zyx(shards) if shards else None,
        voxel_size=tuple(float(v) for v in voxel),  # type: ignore[arg-type]
        axes=tuple(axes),
        zarr_format=int(array.metadata.zarr_format),
        level=chosen,
        voxel_size_source=source,
        order=order,
        sparse=bool(sparse),
    )


def describe(volume: Volume) -> str:
    """One line for logs: URL (redacted), shape, dtype, chunks, voxel size."""
    return json.dumps(
        {
            "url": redact_url(volume.url),
            "shape": volume.shape,
            "dtype": volume.dtype.name,
            "chunks": volume.chunks,
            "voxel_size_nm": volume.voxel_size,
        }
    )
