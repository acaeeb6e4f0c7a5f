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


def read_array(spec: str | os.PathLike[str]) -> np.ndarray:
    """Read a TIFF stack (.tif/.tiff) or an HDF5 dataset (file.h5[:/path]) into memory."""
    spec = str(spec)
    path, dataset = split_hdf5(spec)
    if not path.exists():
        raise FileNotFoundError(f"expected an image file, got no file at {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path)
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


def write_tiff(path: str | os.PathLike[str], array: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a TIFF stack atomically (temporary file, then rename); refuses to overwrite."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"expected a new output path, got existing {path}; pass --overwrite to replace it")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"expected an output path ending in .tif or .tiff, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tifffile.imwrite(tmp, array, photometric="minisblack")
    os.replace(tmp, path)
    return path
