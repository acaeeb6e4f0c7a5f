"""Reading and writing the image files the core works with: TIFF stacks and HDF5 datasets.

An HDF5 dataset is named ``file.h5:/path/in/file`` (CREMI style); without a path the file's
only dataset is used. Zarr volumes belong to `pipeline/`, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def split_hdf5(spec: str) -> tuple[Path, str | None]:
    """``file.h5:/dataset`` → (Path('file.h5'), '/dataset'); no dataset part → None."""
    for suffix in HDF5_SUFFIXES:
        marker = suffix + ":"
        if marker in spec:
            head, _, dataset = spec.partition(marker)
            return Path(head + suffix), dataset or None
    return Path(spec), None


COLOUR_AXES = "SC"  # tifffile's axis codes of colour samples (RGB, planar) and channels


def check_grey_axes(axes: str, where: object) -> None:
    """Refuse a TIFF series with colour samples or channels: EM is one grey value per voxel."""
    found = [a for a in axes if a in COLOUR_AXES]
    if found:
        raise ValueError(
            f"expected grey-level images, got colour samples or channels (axes {axes!r}) in {where}; "
            "save one grey channel (e.g. convert to 8-bit greyscale) first"
        )


def read_tiff(path: str | os.PathLike[str]) -> np.ndarray:
    """A grey-level TIFF image or stack; colour samples, channels and unreadable files refused."""
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_grey_axes(series.axes, path)
            return np.asarray(series.asarray())
    except (tifffile.TiffFileError, OSError, IndexError) as exc:
        raise ValueError(f"expected a readable TIFF at {path}, got: {exc} (truncated or not a TIFF?)") from None


def read_array(spec: str | os.PathLike[str]) -> np.ndarray:
    """Read a TIFF stack (.tif/.tiff) or an HDF5 dataset (file.h5[:/path]) into memory."""
    spec = str(spec)
    path, dataset = split_hdf5(spec)
    if not path.exists():
        raise FileNotFoundError(f"expected an image file, got no file at {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return read_tiff(path)
    if suffix in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as f:
            if dataset is None:
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                if len(names) != 1:
                    raise ValueError(
                        f"expected one dataset in {path} or a name as {path}:/dataset, got {names[:8]}"
                    )
                dataset = names[0]
            if dataset not in f:
                raise KeyError(f"expected dataset {dataset!r} in {path}, got only {list(f.keys())[:8]}")
            return np.asarray(f[dataset])
    raise ValueError(
        f"expected a TIFF (.tif, .tiff) or HDF5 (.h5, .hdf5) file, got {path.name!r}"
    )


# --------------------------------------------------------------------------- TIFF outputs


def emunet_tiff_kind(path: str | os.PathLike[str]) -> str | None:
    """The ``kind`` emunet stored in a TIFF it wrote ("probability", "weights", …), or None."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shaped = tif.shaped_metadata or ()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return None
    for meta in shaped:
        mark = meta.get("emunet") if isinstance(meta, dict) else None
        if isinstance(mark, dict) and isinstance(mark.get("kind"), str):
            return mark["kind"]
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_tiff_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    reads: tuple[str | os.PathLike[str] | None, ...] = (),
    kind: str | None = None,
) -> Path:
    """Refuse an output TIFF path that is an input, or that exists (and, with ``overwrite``,
    is not a TIFF emunet wrote: a user's file is never replaced; with ``kind``, nor is a TIFF
    of another kind, such as the images `emunet synthetic` wrote given as a prediction's output)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"expected an output path ending in .tif or .tiff, got {path.name!r}")
    for read in reads:
        if read is not None and _same_file(path, split_hdf5(str(read))[0]):
            raise ValueError(
                f"expected an output apart from the input, got {path} for both; write the output to another path "
                "(emunet never writes over its inputs)"
            )
    if path.is_dir():
        raise FileExistsError(f"expected an output file, got a directory at {path}; choose another output path")
    if path.exists() or path.is_symlink():
        found = emunet_tiff_kind(path) if path.is_file() else None
        if found is not None and kind is not None and found != kind:
            raise FileExistsError(
                f"expected {'--overwrite to replace ' if overwrite else ''}a {kind} TIFF at {path}, got a {found} TIFF "
                "that emunet wrote (--overwrite replaces only an output of the same kind); choose another output path"
            )
        if not overwrite:
            hint = "pass --overwrite to replace it" if found else "emunet did not write it (no emunet metadata): choose another output path"
            raise FileExistsError(f"expected a new output path, got existing {path}; {hint}")
        if found is None:
            raise FileExistsError(
                f"expected --overwrite to replace a TIFF emunet wrote, got {path}, which emunet did not write "
                "(no emunet metadata); choose another output path, or move that file away yourself"
            )
    return path


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    overwrite: bool = False,
    kind: str = "image",
    reads: tuple[str | os.PathLike[str] | None, ...] = (),
) -> Path:
    """Write a TIFF stack atomically (temporary file, then rename), marked as emunet's.

    The mark (``{"emunet": {"kind": kind}}`` in the TIFF's JSON description) is what lets
    ``--overwrite`` replace it later; a file without it is never replaced.
    """
    import tifffile

    path = check_tiff_output(path, overwrite=overwrite, reads=reads, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tifffile.imwrite(tmp, array, photometric="minisblack", metadata={"emunet": {"kind": kind}})
    os.replace(tmp, path)
    return path
