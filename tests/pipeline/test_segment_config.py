"""`SegmentConfig`'s group size: left unset, `auto_blocks_per_task` sizes tasks by voxels."""

from __future__ import annotations

import pytest

from pipeline.segment_config import (
    MAX_BLOCKS_PER_TASK,
    MIN_BLOCKS_PER_TASK,
    TASK_VOXELS,
    SegmentConfig,
    auto_blocks_per_task,
    auto_queue_depth,
)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ((8, 512, 512), 8),  # the default block: 8 per task, as before
        ((1, 64, 64), 64),  # the scale run's small blocks: capped at 64
        ((8, 256, 256), 32),
        ((3, 333, 257), 66),  # odd shapes round up …
        ((64, 512, 512), 8),  # … and large blocks keep the overlap of at least 8
    ],
)
def test_auto_blocks_per_task_aims_at_a_voxel_count(block, expected) -> None:
    assert auto_blocks_per_task(block) == min(expected, MAX_BLOCKS_PER_TASK)


def test_auto_blocks_per_task_stays_in_bounds_and_shrinks_with_the_block() -> None:
    sizes = [auto_blocks_per_task((z, y, y)) for z in (1, 2, 4, 8, 16, 32) for y in (17, 64, 128, 256, 512, 1024)]
    assert all(MIN_BLOCKS_PER_TASK <= s <= MAX_BLOCKS_PER_TASK for s in sizes)
    by_voxels = sorted((z * y * y, auto_blocks_per_task((z, y, y))) for z in (1, 4, 16) for y in (64, 256, 1024))
    assert [s for _, s in by_voxels] == sorted((s for _, s in by_voxels), reverse=True)
    inside = (4, 300, 301)  # between the bounds a task holds at least TASK_VOXELS, by less than one block more
    n = auto_blocks_per_task(inside)
    assert TASK_VOXELS <= n * 4 * 300 * 301 < TASK_VOXELS + 4 * 300 * 301


def test_blocks_per_task_default_is_auto_and_a_given_one_is_checked() -> None:
    assert SegmentConfig().blocks_per_task is None
    assert SegmentConfig(blocks_per_task=3).blocks_per_task == 3
    with pytest.raises(ValueError, match="Expected blocks_per_task ≥ 1. Got 0 instead"):
        SegmentConfig(blocks_per_task=0)
    assert SegmentConfig.from_env({"EMUNET_SEGMENT_BLOCKS_PER_TASK": "16"}).blocks_per_task == 16
    assert SegmentConfig.from_env({"EMUNET_SEGMENT_BLOCKS_PER_TASK": "none"}).blocks_per_task is None


def test_queue_depth_zero_is_the_serial_path_and_negative_is_refused() -> None:
    assert SegmentConfig().queue_depth is None  # auto: by the block's size
    small, default = (1, 64, 64), (8, 512, 512)
    assert SegmentConfig().stage_depth(small) == 0 and SegmentConfig().stage_depth(default) == 1
    assert auto_queue_depth((1, 255, 256)) == 0 and auto_queue_depth((1, 256, 256)) == 1  # SERIAL_BLOCK_VOXELS
    assert SegmentConfig(queue_depth=2).stage_depth(small) == 2  # a given depth wins
    assert SegmentConfig.from_env({"EMUNET_SEGMENT_QUEUE_DEPTH": "0"}).stage_depth(default) == 0  # one block after another
    assert SegmentConfig.from_env({"EMUNET_SEGMENT_QUEUE_DEPTH": "none"}).queue_depth is None
    with pytest.raises(ValueError, match="Expected queue_depth ≥ 0 .* Got -1 instead"):
        SegmentConfig(queue_depth=-1)
