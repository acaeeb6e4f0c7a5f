"""Sections 2 and 3 of `bench/bench_pipeline.py`: the same model run by other systems, side by side.

2. dask: `dask.array.map_overlap` with the worker's resident model, at ``depth=halo`` and at
   the exact depth that makes its output equal emunet's, on the input's chunks (``--block``);
   emunet with its own default blocks and tiles (``--emunet-geometry defaults``) or with the
   same blocks (``same``);
3. monai: MONAI `sliding_window_inference` with a same-padded twin of the model.

Run through `bench_pipeline.py --only dask,monai`; the helpers (volume, checkpoint, configs)
are that script's. Functions here that run on Dask workers travel by value (cloudpickle), so
the workers need not import this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from bench.bench_pipeline import load, make_volume, predict_config, segment_config, tiles_for_block

# -- 2. dask map_overlap ----------------------------------------------------------------------
def _dask_block(block: np.ndarray, plugin: str, context: int, dtype: str) -> np.ndarray:
    """map_overlap's function: the worker's resident model on a block with `depth` context,
    stored as ``dtype`` the way `emunet segment` stores it (`pipeline.output.to_output_dtype`)."""
    from distributed import get_worker

    from pipeline.output import to_output_dtype

    predictor = get_worker().plugins[plugin].predictor
    inner = np.stack(predictor.predict_region(list(block), (context, context), (context, context)))
    out = np.zeros(block.shape, dtype)
    out[:, context : block.shape[1] - context, context : block.shape[2] - context] = to_output_dtype(inner, dtype)
    return out  # map_overlap(trim=True) cuts the context off again


def run_dask(client, src: Path, out: Path, plugin: str, depth: int, block, dtype: str = "float32") -> float:
    """`dask.array.map_overlap(depth, boundary="reflect", trim=True)` → to_zarr; seconds."""
    import dask.array as da

    arr = da.from_zarr(str(src)).rechunk(tuple(block))
    fn = functools.partial(_dask_block, plugin=plugin, context=depth, dtype=dtype)
    result = arr.map_overlap(fn, depth={0: 0, 1: depth, 2: depth}, boundary="reflect", trim=True, dtype=dtype)
    store = da.to_zarr(result, str(out), overwrite=True, compute=False)
    t0 = time.perf_counter()
    client.compute(store).result()  # on this client's workers: emunet's clients are never the default one
    return time.perf_counter() - t0


def compare(a: np.ndarray, b: np.ndarray, block) -> dict[str, Any]:
    """Max/mean difference and how far from a block's high (y or x) edge the differences sit."""
    diff = np.abs(a.astype(np.float64) - b)
    bad = diff > 1e-5
    _, y, x = np.nonzero(bad)
    to_edge = np.minimum(block[1] - 1 - y % block[1], block[2] - 1 - x % block[2])
    return {
        "max_abs_diff": float(diff.max()),
        "fraction_differing": round(float(bad.mean()), 5),
        "max_distance_from_block_high_edge": int(to_edge.max()) if to_edge.size else None,
    }


def bench_dask(args: argparse.Namespace, workdir: Path, checkpoint: Path) -> dict[str, Any]:
    import zarr
    from distributed import Client

    from pipeline.cluster import ClusterConfig, local_cluster
    from pipeline.plan import model_context
    from pipeline.segment import segment
    from pipeline.worker import ModelPlugin, ModelSpec
    from unetcore import geometry
    from unetcore.checkpoint import file_sha256

    big = tuple(args.shape)
    src = make_volume(workdir / f"in-{'x'.join(map(str, big))}.zarr", big, tuple(args.block))
    ckpt = load(checkpoint)
    halo = geometry.halo(ckpt.config)[0]
    exact = max(max(c) for c in model_context(ckpt.config))
    pc = predict_config(args)
    spec = ModelSpec(str(checkpoint.absolute()), file_sha256(checkpoint), predict={"tile_shape": pc.tile_shape, "batch_size": pc.batch_size, "device": "auto", "amp": True}, torch_threads=args.torch_threads)
    cluster, _, _ = local_cluster(ClusterConfig(workers=args.workers, torch_threads=args.torch_threads))
    with cluster, Client(cluster) as client:
        client.register_plugin(ModelPlugin(spec))  # the same resident model for both
        times: dict[str, list[float]] = {"emunet": [], "dask_depth_halo": [], "dask_depth_exact": []}
        ours_config = segment_config(args, overwrite=True)
        if args.emunet_geometry == "defaults":  # emunet chooses its blocks and tiles; dask runs on the input's chunks
            ours_config = dataclasses.replace(ours_config, block_shape=None, tile_shape=None)
        for _ in range(args.repeats):  # all three in every round: these cores drift between rounds
            t0 = time.perf_counter()
            r = segment(src, workdir / "out-emunet.zarr", checkpoint, ours_config, client=client)
            times["emunet"].append(time.perf_counter() - t0)
            times["dask_depth_halo"].append(run_dask(client, src, workdir / "out-dask.zarr", spec.name, halo, args.block))
            times["dask_depth_exact"].append(
                run_dask(client, src, workdir / "out-dask-exact.zarr", spec.name, exact, args.block)
            )
    ours = zarr.open_group(str(workdir / "out-emunet.zarr"), mode="r")["probability"][:]
    theirs = zarr.open_array(str(workdir / "out-dask.zarr"), mode="r")[:]
    theirs_exact = zarr.open_array(str(workdir / "out-dask-exact.zarr"), mode="r")[:]
    voxels = math.prod(big)
    best = {k: min(v) for k, v in times.items()}
    stored = zarr.open_group(str(workdir / "out-emunet.zarr"), mode="r")
    return {
        "emunet_geometry": {"mode": args.emunet_geometry, "block": stored.attrs["emunet"]["plan"]["block_shape"],
                            "tile": stored.attrs["emunet"]["predict"]["tile"]},  # fmt: skip
        "dask_chunks": list(args.block),
        "halo": halo,
        "exact_context": [list(c) for c in model_context(ckpt.config)[1:]],
        "emunet_seconds": [round(t, 3) for t in times["emunet"]],
        "dask_seconds": [round(t, 3) for t in times["dask_depth_halo"]],
        "dask_exact_depth_seconds": [round(t, 3) for t in times["dask_depth_exact"]],
        "emunet_voxels_per_second": round(voxels / best["emunet"], 1),
        "dask_voxels_per_second": round(voxels / best["dask_depth_halo"], 1),
        "speedup_vs_dask": round(best["dask_depth_halo"] / best["emunet"], 3),
        "speedup_vs_dask_exact_depth": round(best["dask_depth_exact"] / best["emunet"], 3),
        # the same ratios round by round (each round runs the three side by side)
        "speedup_per_round": [[round(d / e, 3), round(x / e, 3)] for e, d, x in
                              zip(times["emunet"], times["dask_depth_halo"], times["dask_depth_exact"])],
        "dask_depth_halo_vs_emunet": compare(theirs, ours, args.block),
        "dask_depth_exact_vs_emunet": compare(theirs_exact, ours, args.block),
        "emunet_ok": r.ok,
    }


# -- 3. MONAI sliding_window_inference ------------------------------------------------------
def bench_monai(args: argparse.Namespace, workdir: Path, checkpoint: Path) -> dict[str, Any]:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return {"skipped": "monai is not installed (pip install monai)"}
    import torch
    import zarr

    from unetcore.model import UNet
    from unetcore.predict import PredictConfig, TilePredictor

    big = tuple(args.shape)
    src = make_volume(workdir / f"in-{'x'.join(map(str, big))}.zarr", big, tuple(args.block))
    image = zarr.open_array(str(src), mode="r")[: args.monai_slices]  # full-width slices
    shape = image.shape
    torch.set_num_threads(os.cpu_count() or 1)
    ckpt = load(checkpoint)
    voxels = image.size

    # emunet's overlap-tile strategy (valid convolutions), in this process
    ours = TilePredictor(ckpt.model, ckpt.normalization, predict_config(args))
    ours.predict_stack(image[:1])
    t0 = time.perf_counter()
    tiled = ours.predict_stack(image)
    t_ours = time.perf_counter() - t0
    whole_tile = max(ours.config.max_out_tile, image.shape[1] + 200, image.shape[2] + 200)
    whole = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(batch_size=1, max_out_tile=whole_tile)).predict_stack(image)
    in_tile = tiles_for_block(ckpt.config, image.shape[1:], ours.config.tile_shape, ours.config)[1]

    # MONAI: a same-padded U-Net of equal depth and width, gaussian blending, overlap 0.25
    torch.manual_seed(0)
    same = UNet(ckpt.config.replace(padding="same")).eval()
    x = torch.from_numpy(ckpt.normalization.apply(image))[:, None]  # (Z, 1, Y, X)
    roi = tuple(min(int(t), int(s)) // 8 * 8 for t, s in zip(in_tile, image.shape[1:]))  # same input size

    def net(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(same(t), 1)[:, 1:2]

    with torch.inference_mode():
        sliding_window_inference(x[:1], roi, args.batch_size, net, overlap=0.25, mode="gaussian")
        t0 = time.perf_counter()
        theirs = sliding_window_inference(x, roi, args.batch_size, net, overlap=0.25, mode="gaussian")[:, 0].numpy()
        t_monai = time.perf_counter() - t0
        pad = [(-s) % 8 for s in image.shape[1:]]
        full = torch.nn.functional.pad(x, (0, pad[1], 0, pad[0]))
        theirs_whole = torch.cat([net(full[i : i + 1]) for i in range(len(full))])[:, 0, : image.shape[1], : image.shape[2]].numpy()
    seam = np.abs(theirs - theirs_whole)
    return {
        "shape": list(shape),
        "monai_roi": list(roi),
        "emunet_tile": list(in_tile),
        "emunet_voxels_per_second": round(voxels / t_ours, 1),
        "monai_voxels_per_second": round(voxels / t_monai, 1),
        "speed_ratio_emunet_over_monai": round(t_monai / t_ours, 3),
        "emunet_tiled_vs_whole_max_abs": float(np.abs(tiled - whole).max()),
        "monai_tiled_vs_whole_max_abs": float(seam.max()),
        "monai_tiled_vs_whole_mean_abs": float(seam.mean()),
        "monai_fraction_over_0.01": round(float((seam > 0.01).mean()), 4),
        "monai_label_flips_at_0.5": round(float(((theirs >= 0.5) != (theirs_whole >= 0.5)).mean()), 5),
        "note": "random weights: the quality figure is each method's deviation from its own model's whole-image prediction",
    }


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers run _dask_block without this file
