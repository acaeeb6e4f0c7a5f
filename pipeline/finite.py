"""Refuse a float input holding NaN or inf before anything is written.

A NaN in the input becomes NaN probabilities over a whole receptive field (185 px), so
`segment` scans float volumes first (uint8 and uint16 cannot hold either). The scan reads
every block's write region once (together they cover each voxel exactly once) on the
workers, in bounded groups of blocks, and costs one extra read of the input: I/O, not model
time. With ``check_finite=False`` (``--no-check-finite``) a terabyte float volume skips it,
and each block whose read region holds such a value fails on its own instead, named in the
ledger ("expected finite grey values, got NaN or inf").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SCAN_BLOCKS_PER_TASK = 16  # write regions read per scan task
SHOWN = 5  # offending blocks named in the message


class NonFiniteInputError(ValueError):
    """A float input volume holds NaN or ±inf."""


def scan_group(job: dict[str, Any]) -> list[dict[str, Any]]:
    """On a worker: the regions of `job` that hold NaN or inf (offset, counts, first voxel)."""
    from pipeline.geometry import Roi
    from pipeline.volume import open_volume

    volume = open_volume(job["input_url"], level=job["level"], sparse=job.get("sparse", False))
    found = []
    for offset, shape in job["rois"]:
        data = volume.read(Roi(tuple(offset), tuple(shape)))
        nan = np.isnan(data)
        inf = np.isinf(data)
        if nan.any() or inf.any():
            first = np.argwhere(nan | inf)[0]
            found.append({
                "offset": list(offset), "shape": list(shape), "nan": int(nan.sum()), "inf": int(inf.sum()),
                "first": [int(o + i) for o, i in zip(offset, first, strict=True)],
            })  # fmt: skip
    return found


def check_finite(
    client: Any, plan: Any, *, max_in_flight: int, blocks_per_task: int = SCAN_BLOCKS_PER_TASK, sparse: bool = False
) -> int:
    """Scan `plan`'s input on `client`'s workers; the voxels scanned, or `NonFiniteInputError`."""
    from pipeline.submit import submit_bounded
    from pipeline.volume import redact_url

    found: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def jobs():
        for start in range(0, plan.num_blocks, blocks_per_task):
            ids = range(start, min(start + blocks_per_task, plan.num_blocks))
            rois = [(list(plan.block(b).write_roi.offset), list(plan.block(b).write_roi.shape)) for b in ids]
            yield {"input_url": plan.input_url, "level": plan.input_level or None, "rois": rois, "sparse": sparse}

    submit_bounded(
        client, scan_group, jobs(), max_in_flight=max_in_flight, resources={},
        on_result=lambda job, result: found.extend(result), on_error=lambda job, exc: errors.append(exc),
        key_prefix="emunet-scan-finite",
    )  # fmt: skip
    if errors:
        raise errors[0]
    if found:
        found.sort(key=lambda f: f["offset"])
        nan, inf = sum(f["nan"] for f in found), sum(f["inf"] for f in found)
        where = "; ".join(
            f"block at {tuple(f['offset'])} of {tuple(f['shape'])}: first at (z, y, x) = {tuple(f['first'])}"
            for f in found[:SHOWN]
        )
        more = f" and {len(found) - SHOWN} more block(s)" if len(found) > SHOWN else ""
        raise NonFiniteInputError(
            f"Expected finite grey values in the float input {redact_url(plan.input_url)}. Got {nan} NaN and "
            f"{inf} inf voxel(s) in {len(found)} block(s) instead ({where}{more}); replace them (e.g. "
            "np.nan_to_num) and re-import, or pass --no-check-finite (check_finite=False) to write every "
            "other block and fail only the blocks that read them"
        )
    return math.prod(plan.volume_shape)


__all__ = ["NonFiniteInputError", "check_finite", "scan_group"]
