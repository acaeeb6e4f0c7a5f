"""Where the instance stage keeps things inside the output store, and the job every task carries.

Next to what `emunet segment` wrote (``OUT.zarr/probability``, ``z y x``, ``ledger/``)::

    OUT.zarr/
    ├── fragments/            (z, y, x) uint64 over-segmentation, chunks = probability's
    ├── neuron_ids/           (z, y, x) uint64 segments at one threshold; OME image-label attrs
    ├── instances/            zarr group; attrs = config, mode, block grid, provenance
    │   ├── graph/<block>.npz           edges owned by the block (u, v, count, mean, quantile)
    │   └── tree/t<k>/l<level>/<node>.npz   agglomeration tree, one file per node and threshold
    └── ledger/instances/<stage>/done/…    one marker per finished block / node (resume)

Files are written through fsspec (a local path or ``s3://…``): no database server. A task
carries an `InstanceJob` (URLs and numbers, never arrays) and reads what it needs itself.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.dtypes import OUTPUT_DTYPES
from pipeline.geometry import Coordinate, Roi
from pipeline.markers import put_object
from pipeline.ledger import Ledger
from pipeline.plan import Block, BlockGrid
from pipeline.volume import fsspec_filesystem, is_remote, redact_url

from .config import InstanceConfig

PROBABILITY = "probability"
FRAGMENTS = "fragments"
NEURON_IDS = "neuron_ids"  # CREMI's name; `labels` is the NGFF group of label images (the mask's)
GROUP = "instances"
AXES = ("z", "y", "x")
PROB_DTYPES = OUTPUT_DTYPES  # what `emunet segment` writes


@dataclass(frozen=True)
class ProbabilityInfo:
    """What the instance stage needs to know about a stored probability map."""

    url: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    dtype: str
    voxel_size: tuple[float, float, float]
    shards: tuple[int, int, int] | None = None  # the probability's shards (labels get the same)


def open_group(url: str, mode: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The output group (`pipeline.output.open_group`), with the fix for a missing one."""
    from pipeline.output import open_group as open_output_group

    try:
        return open_output_group(url, mode, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"expected a Zarr group (an `emunet segment` output) at {redact_url(url)}, got nothing there; "
            "run `emunet segment` first or check the path"
        ) from None


def _voxel_size(group: Any, shape: tuple[int, ...]) -> tuple[float, float, float]:
    meta = dict(group.attrs.asdict()).get("emunet") or {}
    if meta.get("voxel_size_nm"):
        return tuple(float(v) for v in meta["voxel_size_nm"])  # type: ignore[return-value]
    out = []
    for axis, n in zip(AXES, shape, strict=True):
        try:
            coords = np.asarray(group[axis][: min(n, 2)])
            out.append(float(coords[1] - coords[0]) if coords.size == 2 else 1.0)
        except KeyError:
            out.append(1.0)
    return tuple(out)  # type: ignore[return-value]


def probability_info(url: str, storage_options: Mapping[str, Any] | None = None, name: str = PROBABILITY) -> ProbabilityInfo:
    """Check the probability map of an output store (clear errors before any output)."""
    group = open_group(url, "r", storage_options)
    if name not in group:
        raise ValueError(
            f"expected an array {name!r} in {redact_url(url)} (an `emunet segment` output), got members "
            f"{sorted(group.keys())}; pass the output of `emunet segment`"
        )
    array = group[name]
    dims = tuple(getattr(array.metadata, "dimension_names", None) or ())
    if array.ndim != 3 or (dims and dims != AXES):
        raise ValueError(
            f"expected {name!r} with dims {AXES}, got ndim={array.ndim} dims={dims or None} shape={array.shape}; "
            "the instance stage reads (z, y, x) probability maps"
        )
    if str(array.dtype) not in PROB_DTYPES:
        raise ValueError(f"expected {name!r} of dtype in {PROB_DTYPES}, got {array.dtype}")
    if min(array.shape) < 1:
        raise ValueError(f"expected a non-empty probability map, got shape {array.shape}")
    shape = tuple(int(s) for s in array.shape)
    shards = getattr(array, "shards", None)
    return ProbabilityInfo(url, shape, tuple(int(c) for c in array.chunks), str(array.dtype), _voxel_size(group, shape),  # type: ignore[arg-type]
                           None if shards is None else tuple(int(v) for v in shards))  # type: ignore[arg-type]


def to_probability(stored: np.ndarray) -> np.ndarray:
    """Stored values → float32 cell probability (uint8 is round(p·255))."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255)
    return stored.astype(np.float32)


def default_block_shape(info: ProbabilityInfo, mode: str) -> tuple[int, int, int]:
    """Chunk multiples near (8, 256, 256) in 2D mode and 64³ in 3D, clipped to the volume."""
    target = (8, 256, 256) if mode == "2d" else (64, 64, 64)
    out = []
    for size, want, chunk in zip(info.shape, target, info.shards or info.chunks, strict=True):
        cap = -(-size // chunk) * chunk
        out.append(max(chunk, min(-(-want // chunk) * chunk, cap)))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class InstanceJob:
    """Everything a task needs: the store URL, the geometry and the config (picklable)."""

    url: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    mode: str  # "2d" or "3d"
    config: InstanceConfig
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    shards: tuple[int, int, int] | None = None  # written whole by one block each, like the chunks

    def __post_init__(self) -> None:
        unit, what = (self.shards, "shards") if self.shards else (self.chunks, "chunks")
        bad = [b for b, c in zip(self.block_shape, unit, strict=True) if b % c]
        if bad:
            raise ValueError(
                f"expected a block shape that is a multiple of the probability {what} {unit}, got "
                f"{self.block_shape}; choose multiples of the {what[:-1]} shape (or omit --block-shape)"
            )

    @property
    def context(self) -> Coordinate:
        c = int(self.config.context)
        return Coordinate(0 if self.mode == "2d" else c, c, c)

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(Coordinate(self.shape), Coordinate(self.block_shape), self.context, self.context)

    @property
    def num_blocks(self) -> int:
        return self.grid.num_blocks

    def block(self, block_id: int) -> Block:
        """Write ROI (cut at the volume) and read ROI (grown by the context, clipped)."""
        return self.grid.clipped_block(block_id)

    @property
    def id_stride(self) -> int:
        """Fragment ids of block b are b·stride + 1 … b·stride + stride (unique, no coordination)."""
        return math.prod(self.block_shape)

    def block_of_fragment(self, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids, dtype=np.uint64) - np.uint64(1)) // np.uint64(self.id_stride)

    # -- arrays ---------------------------------------------------------------------
    def group(self, mode: str = "r+") -> Any:
        return open_group(self.url, mode, self.storage_options)

    def read_probability(self, roi: Roi) -> np.ndarray:
        return to_probability(np.asarray(self.group("r")[PROBABILITY][roi.to_slices()]))

    # -- files ----------------------------------------------------------------------
    def _path(self, rel: str) -> tuple[Any, str]:
        fs, root = fsspec_filesystem(self.url, self.storage_options)
        return fs, f"{root.rstrip('/')}/{GROUP}/{rel}"

    def put(self, rel: str, **arrays: np.ndarray) -> None:
        """Write ``arrays`` as one ``.npz`` object at ``instances/<rel>`` (atomic locally)."""
        fs, path = self._path(rel)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        put_object(fs, path, buf.getvalue(), remote=is_remote(self.url))

    def get(self, rel: str) -> dict[str, np.ndarray]:
        fs, path = self._path(rel)
        with fs.open(path, "rb") as f:
            with np.load(io.BytesIO(f.read())) as data:
                return {k: data[k] for k in data.files}

    def ledger(self, stage: str, n: int) -> Ledger:
        """Done markers of one stage (``ledger/instances/<stage>``), ``n`` items."""
        return StageLedger(self.url, stage, n, self.storage_options)


class StageLedger(Ledger):
    """A `Ledger` under ``ledger/instances/<stage>``: the segment ledger's layout, another root."""

    def __init__(self, url: str, stage: str, num_blocks: int, storage_options: Mapping[str, Any] | None = None):
        super().__init__(url, num_blocks, storage_options)
        self.root = f"{self.root}/{GROUP}/{stage}"
