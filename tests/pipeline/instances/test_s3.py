"""The instance stage on S3 (a local moto server): arrays, edge and tree files, ledger."""

from __future__ import annotations

import numpy as np
import xarray as xr
import zarr

from pipeline.instances import InstanceConfig, run_instances

from .conftest import probability_from, voronoi_cells
from ..conftest import SECRET


def test_instances_on_s3_equal_local(s3, tmp_path) -> None:
    from .conftest import write_probability_store

    opts, bucket = s3["storage_options"], s3["bucket"]
    cells = voronoi_cells((6, 20, 18), 5, seed=4)
    prob = probability_from(cells)
    url = f"s3://{bucket}/out.zarr"
    group = zarr.open_group(store=url, mode="w", zarr_format=3, storage_options=opts)
    group.create_array("probability", shape=prob.shape, chunks=(3, 20, 9), dtype="uint8",
                       dimension_names=("z", "y", "x"))[...] = prob
    group.attrs["emunet"] = {"voxel_size_nm": [1.0, 1.0, 1.0]}
    config = InstanceConfig(mode="3d", block_shape=(3, 20, 18), context=4, min_size=5, thresholds=(0.3,))
    run_instances(url, config, storage_options=opts)
    local = write_probability_store(tmp_path / "out.zarr", prob, (3, 20, 9))
    run_instances(local, config)
    on_s3 = xr.open_zarr(url, consolidated=False, storage_options=opts)["neuron_ids"]
    assert on_s3.dims == ("z", "y", "x")
    np.testing.assert_array_equal(on_s3.values, zarr.open_group(local, mode="r")["neuron_ids"][...])
    keys = s3["fs"].find(f"{bucket}/out.zarr")
    assert any("/instances/tree/" in k for k in keys) and any("/ledger/instances/relabel-t0/done/" in k for k in keys)
    text = "".join(s3["fs"].cat_file(k).decode() for k in keys if k.endswith("zarr.json"))
    assert SECRET not in text
