"""Thin Prefect 3 flows over `pipeline/` and `unetcore/` (one flow per module).

* `flows.segment_volume.segment_volume`: a Zarr volume → OME-Zarr cell probability on Dask;
* `flows.precompute_weights.precompute_weights`: border weight maps of Zarr labels;
* `flows.train_unet.train_unet`: the paper's training recipe, in process or on a GPU worker.

`prefect.yaml` at the repository root deploys them (docs/guide-deployments.md); `emunet
segment`, `weights` and `train` run them too. `flows._common` and `flows.unet_training`
hold the Prefect-free parts (shared with the CLI and shipped to Dask workers).
"""
