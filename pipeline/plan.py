"""Planning a blocked segmentation: write regions aligned to the output's chunks, read regions
grown by the model's exact context.

One axis (``B`` = block shape, ``lo``/``hi`` = the model's context)::

    total_roi   0                                                        n
                ├────────────────────────────────────────────────────────┤
    write_roi   │◄── B ──►│◄── B ──►│◄── B ──►│◄── B ──►│◄ B' ►│  (chunk-aligned, disjoint;
                                                                  the last one is cut at n)
    read_roi  ├─lo─┼── block 0 ──┼──hi──┤
          mirror◄─┘ (outside the volume: the volume reflected about its edge)
                          ├─lo─┼── block 1 ──┼──hi──┤   (real neighbouring voxels)

The context is asymmetric: ``unetcore.geometry.exact_context`` gives the halo (92 px for
the paper's network) on the low side and a little more (122 px) on the high side, because
an output voxel's pooling phase lets it reach further right than left, and "upconv"
up-sampling looks one coarse pixel ahead. Blocks start on the model's phase lattice (16 px
for the paper's four 2×2 pools): block shapes are multiples of it, so every block sees the
same pooling phase as a whole-volume pass and blocked prediction equals whole-volume
prediction. A 2D model on a (z, y, x) volume has no context and no lattice in z.

Everything is arithmetic on the block id: a plan of 10^6 blocks holds no list of blocks.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.geometry import Coordinate, Roi
from unetcore import geometry as ugeo
from unetcore.config import UNetConfig

PLAN_FORMAT = 1
DEFAULT_SAME_CONTEXT = 32  # per side, for padding="same" models (no exact context exists)
DEFAULT_BLOCK_2D = (4, 1024, 1024)  # `default_block_shape` of a 2D model, before alignment
DEFAULT_CHUNK_2D = (4, 512, 512)  # its output chunks (`default_chunk_shape`): a viewer reads 1 MB, not 4
DEFAULT_BLOCK_3D = (128, 128, 128)


class BlockAlignmentError(ValueError):
    """A block shape that is not a multiple of the chunk (or shard) shape or of the lattice."""


@dataclass(frozen=True)
class Block:
    """One unit of work: ``id``, the voxels it writes and the voxels it reads."""

    id: int
    write_roi: Roi
    read_roi: Roi

    @property
    def context_lo(self) -> Coordinate:
        return self.write_roi.begin - self.read_roi.begin

    @property
    def context_hi(self) -> Coordinate:
        return self.read_roi.end - self.write_roi.end

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "write_offset": list(self.write_roi.offset),
            "write_shape": list(self.write_roi.shape),
            "read_offset": list(self.read_roi.offset),
            "read_shape": list(self.read_roi.shape),
        }


def _ints(values: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if len(out) != n or any(v < 1 for v in out):
        raise ValueError(f"expected {what} of {n} positive integers, got {tuple(values)}")
    return out


def model_context(
    config: UNetConfig, *, same_context: int = DEFAULT_SAME_CONTEXT, tta: bool = False
) -> tuple[tuple[int, int], ...]:
    """(lo, hi) context per (z, y, x) axis for a model on a 3D volume.

    Valid padding: `unetcore.geometry.exact_context` (exact). A 2D model gets (0, 0) in z.
    "same" padding has no exact context; ``same_context`` per side is used (close, not exact).
    ``tta``: every flipped or rotated view of a block must be exact too, so y and x get the
    most any view needs on every side (`unetcore.tta.widen_context`).
    """
    if config.padding == "valid":
        ctx = tuple(tuple(c) for c in ugeo.exact_context(config))
    else:
        ctx = ((same_context, same_context),) * config.spatial_dims
    if tta:
        from unetcore.tta import widen_context

        ctx = widen_context(ctx, ugeo.phase_lattice(config))
    return (((0, 0),) + ctx) if config.spatial_dims == 2 else ctx  # type: ignore[return-value]


def model_lattice(config: UNetConfig) -> tuple[int, int, int]:
    """The phase lattice per (z, y, x) axis (1 in z for a 2D model)."""
    lattice = ugeo.phase_lattice(config)
    return ((1,) + lattice) if config.spatial_dims == 2 else lattice  # type: ignore[return-value]


def _nearest_multiples(size: int, step: int) -> str:
    below = size // step * step
    above = below + step if below != size else size
    return f"{below} or {above}" if below > 0 else f"{above}"


def _aligned(volume_shape: Sequence[int], target: Sequence[int], lattice: Sequence[int], unit: Sequence[int]) -> tuple[int, ...]:
    """Per axis the multiple of lcm(lattice, unit) nearest above ``target``, clipped to the
    volume rounded up to that step."""
    out = []
    for size, want, lat, u in zip(volume_shape, target, lattice, unit, strict=True):
        step = math.lcm(lat, u)
        cap = -(-size // step) * step  # the volume rounded up to the step
        out.append(max(step, min(-(-want // step) * step, cap)))
    return tuple(out)


def default_chunk_shape(volume_shape: Sequence[int], config: UNetConfig) -> tuple[int, int, int]:
    """The output chunks of a default block: (4, 512, 512) for 2D models, aligned and clipped;
    a 3D model's default block is one chunk."""
    if config.spatial_dims != 2:
        return default_block_shape(volume_shape, config)
    return _aligned(volume_shape, DEFAULT_CHUNK_2D, model_lattice(config), (1, 1, 1))  # type: ignore[return-value]


def default_block_shape(
    volume_shape: Sequence[int],
    config: UNetConfig,
    *,
    unit: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """A reasonable block: (4, 1024, 1024) for 2D models, 128³ for 3D, aligned and clipped.

    Each axis is a multiple of lcm(lattice, ``unit``) (``unit`` = the chunk or shard shape),
    and not much larger than the volume. With one tile per plane (`pipeline.prepare.tile_cap`)
    a 1024² plane costs the model 1.18× fewer FLOPs per kept voxel than 512² planes, and
    `segment` with the shipped model ran 1.26× faster on 2 CPU cores (docs/benchmarks.md).
    Four planes, not more: a 2D model computes each plane alone, so the block's depth only
    sets how evenly a short stack spreads over the workers (40 planes: 10 blocks, not 5).
    """
    target = DEFAULT_BLOCK_2D if config.spatial_dims == 2 else DEFAULT_BLOCK_3D
    return _aligned(volume_shape, target, model_lattice(config), tuple(unit) if unit is not None else (1, 1, 1))  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of ``block_shape`` over a volume of ``shape``, read ROIs grown by (lo, hi).

    Pure arithmetic on block ids (C order over the grid); shared by `SegmentPlan` and the
    weight-map plan. Write ROIs are cut at the volume's end; read ROIs are not (the caller
    chooses an edge policy: mirror for prediction, clip for weight maps).
    """

    shape: Coordinate
    block_shape: Coordinate
    context_lo: Coordinate
    context_hi: Coordinate

    @property
    def total_roi(self) -> Roi:
        return Roi((0,) * len(self.shape), self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape, strict=True))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block_index(self, block_id: int) -> Coordinate:
        """Grid position of a block id (C order)."""
        block_id = int(block_id)
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"expected a block id in 0..{self.num_blocks - 1}, got {block_id}")
        index = []
        for n in reversed(self.grid_shape):
            block_id, i = divmod(block_id, n)
            index.append(i)
        return Coordinate(reversed(index))

    def block_id(self, index: Sequence[int]) -> int:
        """Block id of a grid position."""
        index = tuple(int(i) for i in index)
        if len(index) != len(self.shape) or not all(0 <= i < n for i, n in zip(index, self.grid_shape, strict=True)):
            raise IndexError(f"expected a grid position inside {self.grid_shape}, got {index}")
        out = 0
        for i, n in zip(index, self.grid_shape, strict=True):
            out = out * n + i
        return out

    def block(self, block_id: int) -> Block:
        index = self.block_index(block_id)
        write = Roi(index * self.block_shape, self.block_shape).intersect(self.total_roi)
        return Block(int(block_id), write, write.grow(self.context_lo, self.context_hi))

    def clipped_block(self, block_id: int) -> Block:
        """`block` with its read ROI clipped to the volume (the clip edge policy)."""
        b = self.block(block_id)
        return Block(b.id, b.write_roi, b.read_roi.intersect(self.total_roi))

    def block_ids(self, roi: Roi | None = None) -> Iterator[int]:
        """Block ids in C order; with ``roi``, only blocks whose write ROI meets it."""
        if roi is None:
            yield from range(self.num_blocks)
            return
        inside = roi.intersect(self.total_roi)
        if inside.empty:
            return
        first = inside.begin // self.block_shape
        last = (inside.end - 1) // self.block_shape
        for index in itertools.product(*(range(f, la + 1) for f, la in zip(first, last, strict=True))):
            yield self.block_id(index)


_BLOCK_CACHE = 4096  # blocks memoised per plan object (`SegmentPlan.block`)


@dataclass(frozen=True)
class SegmentPlan:
    """How a volume is cut into blocks; frozen and JSON-serialisable (`to_dict`/`from_dict`).

    ``block_shape`` is a multiple of ``chunk_shape`` (or of ``shard_shape`` when the output is
    sharded) and, in the model's pooled axes, of its phase lattice. ``context`` is (lo, hi) per
    (z, y, x) axis. Block ids run over the block grid in C order.
    """

    input_url: str
    output_url: str
    volume_shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    chunk_shape: tuple[int, int, int]
    context: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    model_dims: int = 2
    shard_shape: tuple[int, int, int] | None = None
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_level: int | None = None
    checkpoint_sha256: str = ""
    format: int = PLAN_FORMAT

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("volume_shape", _ints(self.volume_shape, 3, "a volume shape"))
        set_("block_shape", _ints(self.block_shape, 3, "a block shape"))
        set_("chunk_shape", _ints(self.chunk_shape, 3, "a chunk shape"))
        if self.shard_shape is not None:
            set_("shard_shape", _ints(self.shard_shape, 3, "a shard shape"))
        ctx = tuple((int(lo), int(hi)) for lo, hi in self.context)
        if len(ctx) != 3 or any(v < 0 for pair in ctx for v in pair):
            raise ValueError(f"expected (lo, hi) ≥ 0 context for 3 axes, got {self.context}")
        set_("context", ctx)
        set_("voxel_size", tuple(float(v) for v in self.voxel_size))
        if self.model_dims not in (2, 3):
            raise ValueError(f"expected model_dims 2 or 3, got {self.model_dims}")
        if self.format != PLAN_FORMAT:
            raise ValueError(f"expected plan format {PLAN_FORMAT}, got {self.format}")
        unit = self.shard_shape or self.chunk_shape
        if self.shard_shape is not None:
            _require_multiple(self.shard_shape, self.chunk_shape, "shard shape", "chunk shape")
        _require_multiple(self.block_shape, unit, "block shape", "shard shape" if self.shard_shape else "chunk shape")

    # -- the grid -----------------------------------------------------------------------
    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(Coordinate(self.volume_shape), Coordinate(self.block_shape), self.context_lo, self.context_hi)

    @property
    def total_roi(self) -> Roi:
        return Roi((0, 0, 0), self.volume_shape)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.grid.grid_shape  # type: ignore[return-value]

    @property
    def num_blocks(self) -> int:
        return self.grid.num_blocks

    @property
    def context_lo(self) -> Coordinate:
        return Coordinate(lo for lo, _ in self.context)

    @property
    def context_hi(self) -> Coordinate:
        return Coordinate(hi for _, hi in self.context)

    def block_index(self, block_id: int) -> Coordinate:
        """Grid position (z, y, x) of a block id (C order)."""
        return self.grid.block_index(block_id)

    def block_id(self, index: Sequence[int]) -> int:
        """Block id of a grid position (z, y, x)."""
        return self.grid.block_id(index)

    def block(self, block_id: int) -> Block:
        """The block's write ROI (cut at the volume's end) and read ROI (grown by the context).

        Memoised per plan object (a few thousand blocks at most): a worker asks for the same
        block in each of its stages, and building the grid and ROIs costs ~0.4 ms."""
        cache = self.__dict__.get("_blocks")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_blocks", cache)
        block_id = int(block_id)
        block = cache.get(block_id)
        if block is None:
            if len(cache) >= _BLOCK_CACHE:
                cache.clear()
            block = cache[block_id] = self.grid.block(block_id)
        return block

    def __getstate__(self) -> dict[str, Any]:  # the memo never travels
        return {k: v for k, v in self.__dict__.items() if k != "_blocks"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def block_ids(self, roi: Roi | None = None) -> Iterator[int]:
        """Block ids in C order; with ``roi``, only blocks whose write ROI meets it."""
        return self.grid.block_ids(roi)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = json.loads(json.dumps(value))  # tuples → lists, nested too
        d["num_blocks"] = self.num_blocks
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentPlan:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"num_blocks"}
        if unknown:
            raise ValueError(f"expected SegmentPlan keys {sorted(known)}, got unknown {sorted(unknown)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("volume_shape", "block_shape", "chunk_shape", "shard_shape", "voxel_size"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        kwargs["context"] = tuple(tuple(pair) for pair in kwargs["context"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SegmentPlan:
        return cls.from_dict(json.loads(text))


def _require_multiple(shape: Sequence[int], unit: Sequence[int], what: str, of: str) -> None:
    for axis, (s, u) in enumerate(zip(shape, unit, strict=True)):
        if s % u:
            raise BlockAlignmentError(
                f"expected a {what} that is a multiple of the {of} {tuple(unit)} along every "
                f"axis (so no two blocks touch one chunk), got {tuple(shape)}; nearest aligned "
                f"sizes along axis {'zyx'[axis]}: {_nearest_multiples(s, u)}"
            )


def make_plan(
    input_url: str,
    output_url: str,
    volume_shape: Sequence[int],
    model_config: UNetConfig,
    *,
    block_shape: Sequence[int] | None = None,
    chunk_shape: Sequence[int] | None = None,
    shard_shape: Sequence[int] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    input_level: int | None = None,
    checkpoint_sha256: str = "",
    same_context: int = DEFAULT_SAME_CONTEXT,
    tta: bool = False,
) -> SegmentPlan:
    """Plan a blocked prediction of a (z, y, x) volume of ``volume_shape``.

    ``chunk_shape`` (the output's chunks) defaults to the block shape, or to
    `default_chunk_shape` when the block is the default too; ``shard_shape``
    (optional) groups chunks into shards. The block shape must be a multiple of the shard
    (or chunk) shape and, in y and x for a 2D model (every axis for 3D), of the model's
    phase lattice: refused otherwise with the nearest legal sizes. ``tta``: the context for
    test-time augmentation (`model_context`). Pure arithmetic; no I/O.
    """
    shape = _ints(volume_shape, 3, "a volume shape")
    lattice = model_lattice(model_config)
    if chunk_shape is not None:
        chunk_shape = _ints(chunk_shape, 3, "a chunk shape")
    if shard_shape is not None:
        shard_shape = _ints(shard_shape, 3, "a shard shape")
    if block_shape is None and chunk_shape is None and shard_shape is None:
        chunk_shape = default_chunk_shape(shape, model_config)
    unit = shard_shape or chunk_shape
    if block_shape is None:
        block_shape = default_block_shape(shape, model_config, unit=unit)
    block = _ints(block_shape, 3, "a block shape")
    for axis, (b, lat) in enumerate(zip(block, lattice, strict=True)):
        if b % lat:
            step = math.lcm(lat, unit[axis]) if unit is not None else lat
            raise BlockAlignmentError(
                f"expected a block shape whose {'zyx'[axis]} size is a multiple of the model's "
                f"phase lattice {lattice} (tiles must start where a whole-volume pass pools), "
                f"got {block}; nearest legal sizes along {'zyx'[axis]}: {_nearest_multiples(b, step)}"
            )
    return SegmentPlan(
        input_url=str(input_url),
        output_url=str(output_url),
        volume_shape=shape,  # type: ignore[arg-type]
        block_shape=block,  # type: ignore[arg-type]
        chunk_shape=tuple(chunk_shape) if chunk_shape is not None else (tuple(shard_shape) if shard_shape else block),  # type: ignore[arg-type]
        shard_shape=tuple(shard_shape) if shard_shape is not None else None,  # type: ignore[arg-type]
        context=model_context(model_config, same_context=same_context, tta=tta),  # type: ignore[arg-type]
        model_dims=model_config.spatial_dims,
        voxel_size=tuple(voxel_size),  # type: ignore[arg-type]
        input_level=input_level,
        checkpoint_sha256=checkpoint_sha256,
    )


def plan_for_volume(volume: Any, output_url: str, model_config: UNetConfig, **kwargs: Any) -> SegmentPlan:
    """`make_plan` for an opened `pipeline.volume.Volume` (URL, shape, voxel size, level)."""
    return make_plan(
        volume.url,
        output_url,
        volume.shape,
        model_config,
        voxel_size=volume.voxel_size,
        input_level=volume.level,
        **kwargs,
    )
