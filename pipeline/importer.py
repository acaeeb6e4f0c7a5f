"""Import TIFF stacks, HDF5 datasets and N5 datasets into chunked, compressed OME-Zarr (v3).

The result is a group with one array ``0`` (the full-resolution level) and NGFF
``multiscales`` metadata (0.4 style at the top level, 0.5 under ``ome``) whose scale is the
voxel size in nm; ``dimension_names`` are (z, y, x)::

    DST.zarr/
    ├── zarr.json   {"multiscales": [{"axes": [z, y, x in nanometer], "datasets":
    │               [{"path": "0", "coordinateTransformations": [{"scale": [vz, vy, vx]}]}]}],
    │               "ome": {...same, 0.5...}, "emunet_import": {"source": ..., ...}}
    └── 0/          (z, y, x) uint8/uint16/float32, zstd

Streaming: HDF5 and N5 are copied one output chunk at a time, TIFF one slab of ``chunks[0]``
pages at a time (memory-mapped when the file allows): never the whole volume in memory.

Atomic: everything is written under a temporary sibling name and renamed to DST at the end,
so a half-written import never looks complete. An existing DST is refused unless
``overwrite``. (On object stores the final "rename" is a copy; the temporary prefix is only
moved once complete.) The temporary folder of an import that was killed
(``.DST.partial-<host>-<pid>-<id>``) is removed by the next import into DST once that
process is gone from this host; one from another host is named in a warning.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.n5 import N5Dataset, is_n5, split_n5
from pipeline.voxelsize import VoxelSize, check_voxel_size, hdf5_voxel_size, n5_voxel_size, plausibility_warnings, tiff_voxel_size
from pipeline.output import AXES, DENSE, ome_attrs, ome_dataset, ome_multiscale, open_group, zstd
from pipeline.volume import (
    SUPPORTED_DTYPES,
    UnsupportedVolumeError,
    Volume,
    fsspec_filesystem,
    is_remote,
    open_volume,
    redact_url,
)
from unetcore.io import HDF5_SUFFIXES, TIFF_SUFFIXES, check_grey_axes, split_hdf5

DEFAULT_CHUNKS = (32, 256, 256)


@dataclass
class Source:
    """A readable 3D source: shape, dtype, a slicing reader, a voxel size if it knows one."""

    description: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    read: Callable[[tuple[slice, ...]], np.ndarray]
    voxel: VoxelSize | None = None  # what the source states (`pipeline.voxelsize`), in nm
    close: Callable[[], None] = lambda: None
    slab_reader: bool = False  # True: reads whole z-slabs (TIFF pages) cheaply
    voxel_error: str | None = None  # a voxel size stated in a unit we cannot convert


def _check_shape_dtype(shape: Sequence[int], dtype: np.dtype, what: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise UnsupportedVolumeError(
            f"expected a 2D image or a 3D (z, y, x) volume in {what}, got shape {shape}; "
            "extract one channel/time point first"
        )
    if np.dtype(dtype).name not in SUPPORTED_DTYPES:
        labels = np.dtype(dtype).kind in "iu"  # int32/uint64…: instance labels, most likely
        raise UnsupportedVolumeError(
            f"expected {', '.join(SUPPORTED_DTYPES)} voxels in {what}, got {np.dtype(dtype)}; "
            + ("label volumes need no import (weights, train and evaluate read TIFF, HDF5 and Zarr labels as they are; "
               "rescaling would merge instance ids); an EM image of this type: convert it to uint16 or float32 first"
               if labels else "convert it first (e.g. to float32)")
        )
    return shape  # type: ignore[return-value]


def _tiff_source(path: Path) -> Source:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError) as exc:
        raise ValueError(f"expected a readable TIFF at {path}, got: {exc}") from None
    series = tif.series[0]
    try:
        check_grey_axes(series.axes, path)
    except ValueError as exc:
        tif.close()
        raise UnsupportedVolumeError(str(exc)) from None
    shape = _check_shape_dtype(series.shape, series.dtype, str(path))
    try:
        mm = tifffile.memmap(path, mode="r")
        flat = mm.reshape(shape)

        def read(key: tuple[slice, ...]) -> np.ndarray:
            return np.array(flat[key])

    except ValueError:  # compressed or not contiguous: read the pages of the slab

        def read(key: tuple[slice, ...]) -> np.ndarray:
            z0, z1, _ = key[0].indices(shape[0])
            pages = tif.asarray(key=list(range(z0, z1)), series=0) if shape[0] > 1 else tif.asarray(series=0)
            return np.asarray(pages).reshape((z1 - z0, *shape[1:]))[(slice(None), *key[1:])]

    def checked(key: tuple[slice, ...]) -> np.ndarray:
        try:
            return read(key)
        except (IndexError, ValueError, OSError, tifffile.TiffFileError) as exc:
            z0, z1, _ = key[0].indices(shape[0])
            raise ValueError(
                f"expected a complete TIFF at {path} ({shape[0]} page(s) of {shape[1:]}), got pages {z0}..{z1 - 1} "
                f"unreadable ({type(exc).__name__}: {exc}): the file is truncated or damaged; copy it again"
            ) from None

    return Source(f"TIFF {path}", shape, np.dtype(series.dtype), checked, tiff_voxel_size(tif), tif.close, slab_reader=True)


def _stated(read: Callable[[], VoxelSize | None]) -> tuple[VoxelSize | None, str | None]:
    """The voxel size a source states, or the error of a unit we cannot convert (raised
    later only if no ``--voxel-size`` replaces it)."""
    try:
        return read(), None
    except ValueError as exc:
        return None, str(exc)


def _hdf5_source(spec: str) -> Source:
    import h5py

    path, dataset = split_hdf5(spec)
    if not path.is_file():
        raise FileNotFoundError(f"expected an HDF5 file at {path}, got no such file")
    f = h5py.File(path, "r")
    if dataset is None:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        if len(names) != 1:
            f.close()
            raise ValueError(f"expected one dataset in {path} or a name as {path}:/dataset, got {names[:8]}")
        dataset = names[0]
    if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
        keys = list(f.keys())[:8]
        f.close()
        raise KeyError(f"expected a dataset {dataset!r} in {path}, got only {keys}")
    ds = f[dataset]
    shape = _check_shape_dtype(ds.shape, ds.dtype, f"{path}:{dataset}")
    voxel, voxel_error = _stated(lambda: hdf5_voxel_size(ds.attrs, "HDF5"))

    def read(key: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(ds[key[-ds.ndim :]]).reshape(tuple(s.indices(n)[1] - s.indices(n)[0] for s, n in zip(key, shape, strict=True)))

    return Source(f"HDF5 {path}:{dataset}", shape, np.dtype(ds.dtype), read, voxel, f.close, voxel_error=voxel_error)  # type: ignore[arg-type]


def _n5_source(spec: str) -> Source:
    ds = N5Dataset.open(spec)
    shape = _check_shape_dtype(ds.shape, ds.dtype, spec)

    def read(key: tuple[slice, ...]) -> np.ndarray:
        return ds[key[-ds.ndim :]].reshape(tuple(s.indices(n)[1] - s.indices(n)[0] for s, n in zip(key, shape, strict=True)))

    unit, origin = ds.resolution_unit()
    voxel, voxel_error = _stated(lambda: n5_voxel_size(ds.resolution(), unit, origin))
    return Source(f"N5 {spec}", shape, ds.dtype, read, voxel, voxel_error=voxel_error)


def open_source(src: str | os.PathLike[str]) -> Source:
    """A TIFF (.tif/.tiff), HDF5 (file.h5[:/dataset]) or N5 (c.n5[:dataset]) source."""
    spec = str(src)
    if ".n5" in spec and is_n5(spec):
        return _n5_source(spec)
    path, _ = split_hdf5(spec)
    suffix = path.suffix.lower()
    if not path.exists() and not split_n5(spec)[0].exists():
        raise FileNotFoundError(f"expected a TIFF, HDF5 or N5 source at {spec}, got no such path")
    if suffix in TIFF_SUFFIXES:
        return _tiff_source(path)
    if suffix in HDF5_SUFFIXES:
        return _hdf5_source(spec)
    raise ValueError(
        f"expected a TIFF (.tif, .tiff), HDF5 (.h5, .hdf5, file.h5:/dataset) or N5 "
        f"(container.n5:dataset) source, got {path.name!r}; Zarr inputs need no import"
    )


_log = logging.getLogger(__name__)


def _choose_voxel_size(given: Sequence[float] | None, source: Source) -> VoxelSize:
    """``--voxel-size`` if given, else what the source states, else 1 nm (with a note)."""
    if given is not None:
        voxel = check_voxel_size(given)
        notes: tuple[str, ...] = ()
        if source.voxel is not None and any(abs(a - b) > 1e-6 * max(a, b) for a, b in zip(voxel, source.voxel.nm, strict=True)):
            shown = ",".join(f"{v:.6g}" for v in source.voxel.nm)
            notes = (f"--voxel-size {','.join(f'{v:.6g}' for v in voxel)} overrides the source's {shown} nm ({source.voxel.origin})",)
        return VoxelSize(voxel, "--voxel-size", notes)
    if source.voxel_error:
        raise ValueError(source.voxel_error)
    if source.voxel is not None:
        return VoxelSize(check_voxel_size(source.voxel.nm), source.voxel.origin, source.voxel.notes)
    return VoxelSize(
        (1.0, 1.0, 1.0), "default",
        ("the source states no voxel size and none was given: writing 1 nm; pass --voxel-size Z,Y,X in nm (e.g. 50,4,4)",),
    )


def _regions(shape: Sequence[int], step: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    for z in range(0, shape[0], step[0]):
        for y in range(0, shape[1], step[1]):
            for x in range(0, shape[2], step[2]):
                yield tuple(slice(o, min(o + s, n)) for o, s, n in zip((z, y, x), step, shape, strict=True))


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _sweep_leftovers(fs: Any, parent: str, name: str, say: Callable[[str], None]) -> None:
    """Staging folders of earlier imports into the same DST whose process was killed (SIGKILL,
    power loss: no ``except`` ran). Named ``.NAME.partial-<host>-<pid>-<id>``; removed when
    their process is gone from this host, named in a warning otherwise (running, or stopped on
    another machine)."""
    prefix = f".{name}.partial-"
    try:
        entries = fs.ls(parent, detail=False)
    except OSError:  # best effort: a parent that cannot be listed (permissions) holds no sweep
        return
    from pipeline.runlock import pid_alive

    for entry in entries:
        base = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if not base.startswith(prefix):
            continue
        host, _, rest = base[len(prefix) :].partition("-")
        pid = rest.partition("-")[0]
        if host == _host_tag() and pid.isdigit() and not pid_alive(int(pid)):
            fs.rm(str(entry), recursive=True)
            say(f"removed {base}: the staging folder of an import into {name} that was killed (process {pid})")
        else:
            whose = ("another import into it, running or killed on another machine" if pid.isdigit() else
                     "an import into it that did not finish (an earlier emunet version's)")
            say(f"found {base} beside {name}: the staging folder of {whose}; remove it once no such import runs")


@contextmanager
def _staging(dst: str, src: str, overwrite: bool, storage_options: Mapping[str, Any] | None,
             say: Callable[[str], None]) -> Iterator[str]:
    """A temporary sibling of ``dst`` that becomes ``dst`` only if the block succeeds.

    An existing ``dst`` is replaced only with ``overwrite`` and only if emunet wrote it
    (`pipeline.ownership`); ``dst`` may never be, contain or lie inside ``src``.
    """
    from pipeline.ownership import check_output, link_target

    remote = is_remote(dst)
    check_output(dst, reads=(src,), overwrite=overwrite, storage_options=storage_options, kind="import")
    dst = link_target(dst)  # a symlinked DST: the import replaces the store where it points
    fs, path = fsspec_filesystem(dst, storage_options)
    path = path.rstrip("/")
    parent, name = path.rsplit("/", 1)
    _sweep_leftovers(fs, parent, name, say)
    tmp_name = f".{name}.partial-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_path = f"{parent}/{tmp_name}"
    tmp_url = f"{dst.rstrip('/').rsplit('/', 1)[0]}/{tmp_name}" if remote else tmp_path
    if not remote:
        Path(parent).mkdir(parents=True, exist_ok=True)
    try:
        yield tmp_url
    except BaseException:
        if fs.exists(tmp_path):
            fs.rm(tmp_path, recursive=True)
        raise
    if remote:  # object stores cannot rename: copy the finished objects, then delete them
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.invalidate_cache()
        keys = sorted(fs.find(tmp_path), key=lambda k: k.endswith(f"{tmp_name}/zarr.json"))
        for key in keys:  # the root zarr.json (the image's metadata) goes last
            fs.copy(key, path + key[len(tmp_path) :])
        fs.rm(tmp_path, recursive=True)
        return
    old = None
    if os.path.exists(path):
        old = f"{parent}/.{name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp_path, path)  # atomic: DST appears complete or not at all
    if old:
        shutil.rmtree(old, ignore_errors=True)


def import_volume(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    voxel_size: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    compression_level: int = 3,
    storage_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    grey_range: Sequence[float] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Volume:
    """Copy a TIFF/HDF5/N5 volume into an OME-Zarr v3 image at ``dst``; returns it opened.

    ``voxel_size`` (z, y, x nm) overrides what the source states (`pipeline.voxelsize`:
    TIFF resolution tags and ImageJ metadata, HDF5 and N5 attributes, converted to nm);
    without either it is 1 nm, marked as a default. Where it came from is stored
    (``emunet_import.voxel_size_from``); ``warn`` (default: the logger) gets one line per
    note and implausible value (`plausibility_warnings`), which never stop the import.
    ``grey_range`` (lo, hi) is stored with the image for `segment` (`pipeline.grey`).
    ``chunks`` default (32, 256, 256), clipped to the volume.
    """
    dst = str(dst)
    from unetcore.normalization import check_grey_range

    grey = check_grey_range(tuple(grey_range)) if grey_range is not None else None
    if not dst.rstrip("/").endswith(".zarr"):
        raise ValueError(f"expected a destination ending in .zarr, got {dst!r}")
    if re.search(r"\.(h5|hdf5|hdf|n5):", dst, re.IGNORECASE):
        raise ValueError(f"expected a Zarr path for DST, got {dst!r}, an address inside an HDF5/N5 file; write the "
                         "import beside it (e.g. volume.zarr)")
    source = open_source(src)
    try:
        chosen = _choose_voxel_size(voxel_size, source)
        voxel = chosen.nm
        voxel_source = {"--voxel-size": "given", "default": "default"}.get(chosen.origin, "source")
        say = warn or _log.warning
        for note in (*chosen.notes, *plausibility_warnings(voxel, chosen.origin)):
            say(note)
        chunk = tuple(int(c) for c in (chunks or DEFAULT_CHUNKS))
        if len(chunk) != 3 or min(chunk) < 1:
            raise ValueError(f"expected 3 positive chunk sizes (z, y, x), got {chunks}")
        chunk = tuple(min(c, s) for c, s in zip(chunk, source.shape, strict=True))
        with _staging(dst, str(src), overwrite, storage_options, say) as tmp:
            group = open_group(tmp, "w", storage_options)
            array = group.create_array(
                "0", shape=source.shape, chunks=chunk, dtype=source.dtype, fill_value=0,
                dimension_names=AXES, compressors=zstd(compression_level), config=DENSE,
            )
            step = (chunk[0], source.shape[1], source.shape[2]) if source.slab_reader else chunk
            regions = list(_regions(source.shape, step)) if progress else _regions(source.shape, step)
            total = len(regions) if progress else 0
            for i, key in enumerate(regions):
                array[key] = source.read(key)
                if progress:
                    progress(i + 1, total)
            from pipeline.version import package_version

            multiscale = ome_multiscale("image", [ome_dataset("0", voxel)])
            group.attrs.update(
                ome_attrs([multiscale])
                | {
                    "emunet_import": {
                        "source": redact_url(str(src)),
                        "source_kind": source.description.split(" ", 1)[0],
                        "voxel_size_source": voxel_source,
                        "voxel_size_from": chosen.origin,
                        "version": package_version(),
                        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        **({"grey_range": list(grey)} if grey else {}),
                    }
                }
            )
    finally:
        source.close()
    return open_volume(dst, storage_options=storage_options)
