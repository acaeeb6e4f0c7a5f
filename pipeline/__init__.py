"""Engine-level volume work: Zarr volumes, planning, Dask execution, stitching and metrics. Never imports Prefect."""
