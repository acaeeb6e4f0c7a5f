"""Fixtures for the data-plane tests: a local S3 (moto, 127.0.0.1 only), a tiny model, and
writers for small Zarr and N5 volumes (the N5 writer follows the spec independently of the
reader in `pipeline.n5`)."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SECRET = "s3cr3t-never-in-attrs"



@pytest.fixture()
def s3(s3_server: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh bucket and the storage options (fake credentials) to reach it."""
    import s3fs

    opts = {"key": "testing", "secret": SECRET, "endpoint_url": s3_server}
    fs = s3fs.S3FileSystem(**opts)
    bucket = "b-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return {"bucket": bucket, "storage_options": opts, "fs": fs}


# --------------------------------------------------------------------------- model


@pytest.fixture(scope="session")
def tiny_model():
    """`UNet(preset("tiny").replace(base_channels=2))`, deterministic weights, eval mode."""
    import torch

    from unetcore.config import preset
    from unetcore.model import UNet

    torch.manual_seed(0)
    return UNet(preset("tiny").replace(base_channels=2)).eval()


@pytest.fixture()
def single_thread_torch() -> Iterator[None]:
    """One intra-op thread: tiny convolutions on a shared 2-core machine are ~40× faster
    without thread oversubscription. Restored after the test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _predictor(tiny_model):
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    return TilePredictor(tiny_model, Normalization(mean=0.5, std=0.25), PredictConfig(device="cpu", batch_size=8))


@pytest.fixture()
def predictor(_predictor, single_thread_torch):
    """A CPU `TilePredictor` of the tiny model (single-threaded during the test)."""
    return _predictor


# --------------------------------------------------------------------------- writers


def write_zarr(path: Path | str, data: np.ndarray, chunks: tuple[int, ...], *, zarr_format: int = 3, **kwargs: Any):
    import zarr

    kwargs.setdefault("config", {"write_empty_chunks": True})  # a complete volume: every chunk stored
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format, **kwargs)
    array[...] = data
    return array


def write_ome(path: Path, levels: list[np.ndarray], voxel: tuple[float, float, float], unit: str = "nanometer") -> None:
    """A small OME-Zarr (v3) multiscale image with NGFF 0.4-style metadata."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    datasets = []
    for k, data in enumerate(levels):
        a = group.create_array(f"s{k}", shape=data.shape, chunks=tuple(min(8, s) for s in data.shape), dtype=data.dtype,
                               config={"write_empty_chunks": True})
        a[...] = data
        scale = [voxel[0], voxel[1] * 2**k, voxel[2] * 2**k]
        datasets.append({"path": f"s{k}", "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": a, "type": "space", "unit": unit} for a in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "name": "em", "axes": axes, "datasets": datasets}]


def write_n5(
    container: Path,
    dataset: str,
    data: np.ndarray,
    block: tuple[int, ...],
    *,
    compression: str = "raw",
    skip_zero_blocks: bool = False,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write ``data`` (numpy order) as an N5 dataset per the spec: x-first metadata and
    block paths, big-endian header and values, gzip (not zlib) for "gzip"."""
    root = container
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.0"}))
    path = root / dataset
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "dimensions": list(reversed(data.shape)),
        "blockSize": list(reversed(block)),
        "dataType": data.dtype.name,
        "compression": {"type": compression} | ({"level": -1} if compression == "gzip" else {}),
        **(attrs or {}),
    }
    (path / "attributes.json").write_text(json.dumps(meta))
    grid = [range(0, s, b) for s, b in zip(data.shape, block)]
    for starts in np.ndindex(*(len(g) for g in grid)):
        origin = [g[i] for g, i in zip(grid, starts)]
        chunk = data[tuple(slice(o, o + b) for o, b in zip(origin, block))]
        if skip_zero_blocks and not chunk.any():
            continue
        header = struct.pack(">HH", 0, chunk.ndim) + struct.pack(f">{chunk.ndim}I", *reversed(chunk.shape))
        body = np.ascontiguousarray(chunk).astype(chunk.dtype.newbyteorder(">")).tobytes()
        if compression == "gzip":
            body = gzip.compress(body)
        file = path.joinpath(*(str(i) for i in reversed(starts)))
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(header + body)
    return path
