"""Border weight maps (U-Net paper, Eq. 2) of Zarr label volumes, block by block.

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / 2σ²)

computed per block on the block's write ROI grown by a halo, and equal to the whole-volume
computation (`unetcore.weightmap.border_weight_map` on the 3D volume, or
`weight_map_stack` slice by slice in "2d" mode). Why that holds, term by term:

* **Border term.** With ``cutoff > 0`` it is non-zero only where ``d1 + d2 ≤ reach``
  (`WeightMapConfig.reach`); the two cells involved then lie within ``reach − 1`` of the
  voxel (a background voxel has ``d1 ≥ 1``). A halo of ``⌊(reach − 1) / spacing⌋ + 1`` voxels
  per axis therefore contains them, and their distances are the whole-volume ones. Where
  ``d1 + d2 > reach`` the cropped distances can only be larger: the term is 0 either way.
  ``cutoff = 0`` (infinite reach) cannot be blocked and is refused. The halo is clipped at
  the volume's edge (no mirror: the whole-volume map has none either).
* **Which voxels form one cell.** Instance labels: each id is one cell wherever it occurs
  (ids are global), so the halo suffices. Binary labels: cells are connected components
  of ``label > 0`` (4-connected in a slice, 6-connected in 3D), and a component can leave
  any halo and come back: two pieces that look separate in a block may be one cell. So
  binary labels are first labelled *globally*: each block is labelled on its own, the
  pieces touching across block faces are merged (union of face pairs, connected
  components of that graph), and each block then sees global cell ids.
* **Class balance** ``w_c = N / (K · N_c)`` uses class frequencies: counted in one pass
  over the volume first (per slice in "2d" mode, as `weight_map_stack` does; over the
  whole volume in "3d" mode) and passed to every block.

Every block calls ``border_weight_map(..., class_counts=...)`` with those global counts,
so the blockwise result is bitwise equal to the whole-volume map.

A single-process driver, `compute_weight_maps`; the per-block functions take addresses
(URLs, block ids) so they can be mapped on Dask.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.geometry import Coordinate, Roi
from pipeline.output import AXES, DENSE, ome_attrs, ome_dataset, ome_multiscale, open_group, remove_store, write_coordinates, zstd
from pipeline.ownership import check_em_input, check_output, link_target, remove_ours
from pipeline.plan import Block, BlockGrid
from pipeline.volume import LABEL_DTYPES, Volume, join_url, open_volume, redact_url
from unetcore.weightmap import WeightMapConfig, border_weight_map, check_has_membrane

WeightMode = Literal["2d", "3d"]
SCRATCH = "scratch"


def weight_halo(config: WeightMapConfig, mode: WeightMode, sampling: Sequence[float] | None = None) -> tuple[int, int, int]:
    """Halo (z, y, x) that makes a block's weight map equal the whole-volume map."""
    if mode not in ("2d", "3d"):
        raise ValueError(f"expected mode '2d' or '3d', got {mode!r}")
    reach = config.reach
    if math.isinf(reach):
        raise ValueError(
            "expected a weight-map cutoff > 0 for blockwise computation (the border term's reach "
            "must be finite to bound the halo), got cutoff=0; use e.g. cutoff=0.01"
        )
    if config.w0 == 0 or reach == 0:
        return (0, 0, 0)
    limit = max(reach - 1.0, 0.0)
    if mode == "2d":
        m = math.floor(limit) + 1
        return (0, m, m)
    s = np.ones(3) if sampling is None else np.asarray(sampling, dtype=float)
    s = s / s.min()
    return tuple(math.floor(limit / v) + 1 for v in s)  # type: ignore[return-value]


@dataclass(frozen=True)
class WeightPlan:
    """Blocks of a label volume for weight maps (JSON-serialisable via `to_dict`)."""

    labels_url: str
    output_url: str
    volume_shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    halo: tuple[int, int, int]
    mode: str = "2d"
    instances: bool = False
    config: WeightMapConfig = WeightMapConfig()
    sampling: tuple[float, float, float] | None = None
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(Coordinate(self.volume_shape), Coordinate(self.block_shape), Coordinate(self.halo), Coordinate(self.halo))

    @property
    def num_blocks(self) -> int:
        return self.grid.num_blocks

    def block(self, block_id: int) -> Block:
        """Write ROI, and read ROI = write grown by the halo, clipped to the volume."""
        return self.grid.clipped_block(block_id)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = dataclasses.asdict(self.config)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightPlan:
        d = dict(data)
        d["config"] = WeightMapConfig(**d["config"])
        for key in ("volume_shape", "block_shape", "halo", "sampling", "voxel_size"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def make_weight_plan(
    labels: Volume,
    output_url: str,
    config: WeightMapConfig = WeightMapConfig(),
    *,
    instances: bool = False,
    mode: WeightMode = "2d",
    block_shape: Sequence[int] | None = None,
    sampling: Sequence[float] | None = None,
) -> WeightPlan:
    """Plan weight maps of an opened label volume (3D mode uses its voxel size as sampling)."""
    if sampling is None and mode == "3d":
        sampling = labels.voxel_size
    block = tuple(int(b) for b in (block_shape or (16, 256, 256)))
    block = tuple(min(b, s) for b, s in zip(block, labels.shape, strict=True))
    if len(block) != 3 or min(block) < 1:
        raise ValueError(f"expected a block shape of 3 positive integers, got {block_shape}")
    return WeightPlan(
        labels_url=labels.url,
        output_url=str(output_url),
        volume_shape=labels.shape,
        block_shape=block,  # type: ignore[arg-type]
        halo=weight_halo(config, mode, sampling),
        mode=mode,
        instances=instances,
        config=config,
        sampling=tuple(float(s) for s in sampling) if sampling is not None else None,  # type: ignore[arg-type]
        voxel_size=labels.voxel_size,
    )


# --------------------------------------------------------------------------- pass 0: counts


def foreground_counts(plan: WeightPlan, labels: Volume) -> np.ndarray:
    """Voxels with label > 0 per z slice (int64, length Z): one pass over the volume."""
    counts = np.zeros(plan.volume_shape[0], dtype=np.int64)
    for block_id in range(plan.num_blocks):
        roi = plan.block(block_id).write_roi
        fg = labels.read(roi) > 0
        counts[roi.begin[0] : roi.end[0]] += fg.sum(axis=(1, 2))
    return counts


# --------------------------------------------------------------------------- binary labels: global cells


def _structure(mode: WeightMode) -> np.ndarray:
    s = ndimage.generate_binary_structure(3, 1)
    if mode == "2d":
        s[0] = s[2] = False  # no connections between slices
    return s


@dataclass
class CellTable:
    """Global cell ids of binary labels: block-local ids + offset, merged across faces."""

    grid: BlockGrid
    local: Any  # zarr array of block-local component ids (uint32)
    offsets: np.ndarray  # per block: first provisional id − 1
    table: np.ndarray  # provisional id → global cell id (0 = background)

    def cells(self, roi: Roi) -> np.ndarray:
        out = np.zeros(tuple(roi.shape), dtype=np.int64)
        for block_id in self.grid.block_ids(roi):
            part = self.grid.block(block_id).write_roi.intersect(roi)
            local = np.asarray(self.local[part.to_slices()]).astype(np.int64)
            ids = np.where(local > 0, local + self.offsets[block_id], 0)
            out[part.to_slices(relative_to=roi)] = self.table[ids]
        return out


def label_globally(
    plan: WeightPlan, labels: Volume, scratch_url: str, storage_options: Mapping[str, Any] | None = None
) -> CellTable:
    """Connected components of ``label > 0`` over the whole volume, block by block."""
    grid = BlockGrid(Coordinate(plan.volume_shape), Coordinate(plan.block_shape), Coordinate(0, 0, 0), Coordinate(0, 0, 0))
    group = open_group(scratch_url, "a", storage_options)
    local = group.create_array("cells", shape=plan.volume_shape, chunks=plan.block_shape, dtype="uint32", fill_value=0, overwrite=True)
    structure = _structure(plan.mode)  # type: ignore[arg-type]
    counts = np.zeros(grid.num_blocks, dtype=np.int64)
    for block_id in range(grid.num_blocks):
        roi = grid.block(block_id).write_roi
        lab, n = ndimage.label(labels.read(roi) > 0, structure=structure)
        local[roi.to_slices()] = lab.astype(np.uint32)
        counts[block_id] = n
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    pairs = []
    axes = (1, 2) if plan.mode == "2d" else (0, 1, 2)
    for block_id in range(grid.num_blocks):
        index = grid.block_index(block_id)
        roi = grid.block(block_id).write_roi
        for a in axes:
            if index[a] == 0:
                continue
            lower = grid.block_id(tuple(i - (k == a) for k, i in enumerate(index)))
            first = Roi(roi.begin, tuple(1 if k == a else s for k, s in enumerate(roi.shape)))
            last = first.shift(tuple(-(k == a) for k in range(3)))
            mine = np.asarray(local[first.to_slices()]).astype(np.int64).ravel()
            theirs = np.asarray(local[last.to_slices()]).astype(np.int64).ravel()
            both = (mine > 0) & (theirs > 0)
            if both.any():
                pairs.append(np.stack([mine[both] + offsets[block_id], theirs[both] + offsets[lower]]))
    edges = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), dtype=np.int64)
    graph = coo_matrix((np.ones(edges.shape[1], dtype=np.int8), (edges[0], edges[1])), shape=(total + 1, total + 1))
    _, component = connected_components(graph, directed=False)
    table = np.where(np.arange(total + 1) == 0, 0, component.astype(np.int64) + 1)
    return CellTable(grid, local, offsets, table)


# --------------------------------------------------------------------------- one block


def weight_block(
    plan: WeightPlan,
    block_id: int,
    cells: Callable[[Roi], np.ndarray],
    counts: np.ndarray,
) -> np.ndarray:
    """The weight map (float32) of one block's write ROI.

    ``cells(roi)`` returns global cell ids (instance ids, or `CellTable.cells`);
    ``counts`` the foreground voxels per z slice (`foreground_counts`).
    """
    block = plan.block(block_id)
    ids = cells(block.read_roi)
    plane = plan.volume_shape[1] * plan.volume_shape[2]
    if plan.mode == "2d":
        z0 = block.read_roi.begin[0]
        maps = np.stack([
            border_weight_map(ids[k], plan.config, instances=True, class_counts=(plane, int(counts[z0 + k])))
            for k in range(ids.shape[0])
        ])
    else:
        total = (plane * plan.volume_shape[0], int(counts.sum()))
        maps = border_weight_map(ids, plan.config, instances=True, sampling=plan.sampling, class_counts=total)
    return maps[block.write_roi.to_slices(relative_to=block.read_roi)]


# --------------------------------------------------------------------------- driver


def compute_weight_maps(
    labels_url: str,
    output_url: str,
    config: WeightMapConfig = WeightMapConfig(),
    *,
    instances: bool = False,
    mode: WeightMode = "2d",
    block_shape: Sequence[int] | None = None,
    sampling: Sequence[float] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> WeightPlan:
    """Weight maps of a Zarr label volume into an OME-Zarr group (array ``weights``).

    Single process: pass 0 counts classes, pass 1 (binary labels) labels cells globally in
    a scratch array inside the output (deleted at the end), pass 2 writes the blocks.
    """
    labels = open_volume(labels_url, storage_options=storage_options, dtypes=LABEL_DTYPES)
    check_em_input(labels_url, storage_options, what="labels (0 = membrane, > 0 = cell)", values="labels")
    plan = make_weight_plan(labels, output_url, config, instances=instances, mode=mode, block_shape=block_shape, sampling=sampling)
    existing = check_output(output_url, reads=(labels_url,), overwrite=overwrite, storage_options=storage_options,
                            kind="weights").exists
    counts = foreground_counts(plan, labels)  # pass 0, before anything is replaced or written
    check_has_membrane(int(counts.sum()), math.prod(plan.volume_shape), redact_url(labels_url))
    if existing:
        remove_ours(output_url, storage_options)
    group = open_group(link_target(output_url), "w", storage_options)  # a symlinked output: where it points
    from pipeline.version import package_version

    meta = {
        "version": package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,  # True once every block is written
        "labels_url": redact_url(labels_url),
        "weights": plan.to_dict() | {"labels_url": redact_url(labels_url), "output_url": redact_url(output_url)},
    }
    group.attrs.update({"emunet": meta})  # marks the store as emunet's from the start (a retry may replace it)
    out = group.create_array(
        "weights", shape=plan.volume_shape, chunks=plan.block_shape, dtype="float32", fill_value=0.0,
        dimension_names=AXES, compressors=zstd(), config=DENSE,
    )
    write_coordinates(group, plan.volume_shape, plan.voxel_size)
    if instances:
        def cells(roi: Roi) -> np.ndarray:
            return labels.read(roi).astype(np.int64)
    else:
        cells = label_globally(plan, labels, join_url(output_url, SCRATCH), storage_options).cells
    for block_id in range(plan.num_blocks):
        out[plan.block(block_id).write_roi.to_slices()] = weight_block(plan, block_id, cells, counts)
    if not instances:
        remove_store(join_url(output_url, SCRATCH), storage_options)
    meta |= {"complete": True, "foreground_per_slice": counts.tolist() if len(counts) <= 4096 else None}
    group.attrs.update(ome_attrs([ome_multiscale("weights", [ome_dataset("weights", plan.voxel_size)])]) | {"emunet": meta})
    return plan
