"""`SegmentPlan`: exact cover by write ROIs, context from the model, alignment refusals,
arithmetic-only planning of huge volumes, JSON round trips."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import Roi
from pipeline.plan import BlockAlignmentError, SegmentPlan, default_block_shape, make_plan, model_context
from unetcore.config import preset

TINY = preset("tiny")  # lattice 8, context (44, 58)
PAPER = preset("paper")


@st.composite
def shapes_and_blocks(draw):
    shape = tuple(draw(st.integers(1, 40)) for _ in range(3))
    chunks = (draw(st.integers(1, 6)), 8 * draw(st.integers(1, 3)), 8 * draw(st.integers(1, 3)))
    factor = tuple(draw(st.integers(1, 3)) for _ in range(3))
    block = tuple(c * f for c, f in zip(chunks, factor))
    return shape, chunks, block


@settings(max_examples=60, deadline=None)
@given(shapes_and_blocks())
def test_write_rois_cover_every_voxel_exactly_once(case) -> None:
    shape, chunks, block = case
    plan = make_plan("in.zarr", "out.zarr", shape, TINY, block_shape=block, chunk_shape=chunks)
    count = np.zeros(shape, dtype=np.int32)
    for block_id in plan.block_ids():
        b = plan.block(block_id)
        count[b.write_roi.to_slices()] += 1
        assert plan.total_roi.contains(b.write_roi) and not b.write_roi.empty
        # chunk-aligned: starts on the chunk grid, ends on it or at the volume's end
        assert all(o % c == 0 for o, c in zip(b.write_roi.begin, chunks))
        assert all(e % c == 0 or e == s for e, c, s in zip(b.write_roi.end, chunks, shape))
        assert b.read_roi == b.write_roi.grow(plan.context_lo, plan.context_hi)
    assert (count == 1).all()
    assert plan.num_blocks == len(list(plan.block_ids()))


def test_context_is_the_exact_context_and_none_in_z_for_2d() -> None:
    assert model_context(PAPER) == ((0, 0), (92, 122), (92, 122))
    assert model_context(TINY) == ((0, 0), (44, 58), (44, 58))
    aniso = model_context(preset("aniso3d"))
    assert aniso[0] != (0, 0) and len(aniso) == 3
    plan = make_plan("in.zarr", "out.zarr", (4, 1000, 1000), PAPER, block_shape=(1, 512, 512))
    b = plan.block(plan.block_id((1, 1, 0)))
    assert b.write_roi == Roi((1, 512, 0), (1, 488, 512))
    assert b.read_roi == Roi((1, 420, -92), (1, 488 + 92 + 122, 512 + 92 + 122))


def test_block_not_multiple_of_chunks_is_refused_with_nearest_sizes() -> None:
    with pytest.raises(BlockAlignmentError, match=r"multiple of the chunk shape .*nearest aligned sizes along axis y: 128 or 192"):
        make_plan("a", "b", (10, 500, 500), PAPER, block_shape=(1, 160, 128), chunk_shape=(1, 64, 64))


def test_block_off_the_phase_lattice_is_refused_with_nearest_legal_sizes() -> None:
    with pytest.raises(BlockAlignmentError, match=r"phase lattice .*nearest legal sizes along x: 496 or 512"):
        make_plan("a", "b", (10, 600, 600), PAPER, block_shape=(1, 512, 500))
    assert isinstance(BlockAlignmentError("x"), ValueError)


def test_shards_must_hold_whole_chunks_and_blocks_whole_shards() -> None:
    plan = make_plan("a", "b", (8, 256, 256), PAPER, block_shape=(2, 128, 128), chunk_shape=(1, 32, 32), shard_shape=(2, 128, 128))
    assert plan.shard_shape == (2, 128, 128) and plan.chunk_shape == (1, 32, 32)
    with pytest.raises(BlockAlignmentError, match="shard shape"):
        make_plan("a", "b", (8, 256, 256), PAPER, block_shape=(2, 128, 128), chunk_shape=(1, 48, 48), shard_shape=(2, 128, 128))


def test_default_block_shape_is_aligned_and_clipped() -> None:
    assert default_block_shape((100, 5000, 5000), PAPER) == (4, 1024, 1024)
    assert default_block_shape((3, 100, 37), TINY) == (3, 104, 40)
    assert default_block_shape((100, 1000, 1000), preset("aniso3d"))[1] % 16 == 0
    plan = make_plan("a", "b", (30, 512, 512), PAPER)
    assert plan.block_shape == (4, 512, 512) and plan.chunk_shape == plan.block_shape


def test_default_blocks_are_written_in_smaller_chunks() -> None:
    """A default block is 2 × 2 chunks of (4, 512, 512) in y, x; a block the user chose is
    one chunk unless chunks are given; a 3D model's default block is one chunk."""
    plan = make_plan("a", "b", (30, 3000, 2000), PAPER)
    assert (plan.block_shape, plan.chunk_shape) == ((4, 1024, 1024), (4, 512, 512))
    clipped = make_plan("a", "b", (3, 600, 37), TINY)
    assert (clipped.block_shape, clipped.chunk_shape) == ((3, 1024, 40), (3, 512, 40))
    assert make_plan("a", "b", (30, 3000, 2000), PAPER, block_shape=(8, 256, 256)).chunk_shape == (8, 256, 256)
    given = make_plan("a", "b", (30, 3000, 2000), PAPER, chunk_shape=(4, 256, 256))
    assert (given.block_shape, given.chunk_shape) == ((4, 1024, 1024), (4, 256, 256))
    cube = make_plan("a", "b", (300, 300, 300), preset("aniso3d"))
    assert cube.block_shape == cube.chunk_shape


def test_planning_a_terabyte_volume_is_arithmetic() -> None:
    shape = (10_000, 100_000, 100_000)  # 10^14 voxels ≈ 100 TB at uint8
    tracemalloc.start()
    start = time.perf_counter()
    plan = make_plan("s3://bucket/huge.zarr", "s3://bucket/out.zarr", shape, PAPER, block_shape=(8, 512, 512))
    last = plan.block(plan.num_blocks - 1)
    ids = plan.block_ids()
    first_million = sum(1 for _ in zip(range(1000), ids))
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert plan.num_blocks == 1250 * 196 * 196 and first_million == 1000
    assert last.write_roi.end == shape
    assert elapsed < 0.5 and peak < 1_000_000


def test_block_ids_in_roi() -> None:
    plan = make_plan("a", "b", (4, 64, 64), TINY, block_shape=(2, 16, 16))
    ids = list(plan.block_ids(Roi((1, 10, 20), (2, 10, 1))))
    found = {tuple(plan.block_index(i)) for i in ids}
    assert found == {(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)}
    assert list(plan.block_ids(Roi((10, 0, 0), (1, 1, 1)))) == []


def test_plan_json_round_trip_and_validation() -> None:
    plan = make_plan("in.zarr", "out.zarr", (5, 70, 90), TINY, block_shape=(2, 16, 24), checkpoint_sha256="ab" * 32, voxel_size=(50, 4, 4))
    again = SegmentPlan.from_json(json.dumps(plan.to_dict()))
    assert again == plan and hash(again) == hash(plan)
    assert plan.to_dict()["num_blocks"] == plan.num_blocks
    with pytest.raises(ValueError, match="unknown"):
        SegmentPlan.from_dict(plan.to_dict() | {"bogus": 1})
    with pytest.raises(IndexError, match="block id"):
        plan.block(plan.num_blocks)
    with pytest.raises(ValueError, match="positive integers"):
        make_plan("a", "b", (0, 10, 10), TINY)
