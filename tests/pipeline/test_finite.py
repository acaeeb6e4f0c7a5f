"""The NaN/inf scan of a float input (`pipeline.finite`): exact finds, every voxel read once,
and a finite float volume passes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.finite import NonFiniteInputError, check_finite, scan_group
from pipeline.plan import make_plan
from tests.pipeline.conftest import write_zarr
from unetcore.config import preset

SHAPE = (5, 37, 29)  # odd: edge blocks are smaller


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def _volume(tmp_path, bad: dict[tuple[int, int, int], float]) -> str:
    data = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    for where, value in bad.items():
        data[where] = value
    write_zarr(tmp_path / "f.zarr", data, (1, 16, 16))
    return str(tmp_path / "f.zarr")


def _plan(url: str):
    return make_plan(url, "out.zarr", SHAPE, preset("tiny"), block_shape=(2, 16, 16))


def test_scan_group_reports_counts_and_the_first_voxel(tmp_path) -> None:
    url = _volume(tmp_path, {(1, 3, 4): np.nan, (1, 5, 6): np.inf, (4, 36, 28): -np.inf})
    plan = _plan(url)
    rois = [(list(plan.block(b).write_roi.offset), list(plan.block(b).write_roi.shape)) for b in range(plan.num_blocks)]
    found = scan_group({"input_url": url, "level": None, "rois": rois})
    assert [(f["first"], f["nan"], f["inf"]) for f in found] == [([1, 3, 4], 1, 1), ([4, 36, 28], 0, 1)]


def test_a_finite_float_volume_passes_and_every_voxel_is_read(tmp_path, client) -> None:
    plan = _plan(_volume(tmp_path, {}))
    assert check_finite(client, plan, max_in_flight=2, blocks_per_task=3) == np.prod(SHAPE)


@pytest.mark.parametrize("where", [(0, 0, 0), (4, 36, 28), (2, 20, 17)])
def test_one_bad_voxel_anywhere_is_found(tmp_path, client, where) -> None:
    plan = _plan(_volume(tmp_path, {where: np.nan}))
    with pytest.raises(NonFiniteInputError, match=rf"Got 1 NaN and 0 inf voxel\(s\) in 1 block\(s\).*first at \(z, y, x\) = \({', '.join(map(str, where))}\)"):
        check_finite(client, plan, max_in_flight=2, blocks_per_task=3)
