"""One-shot GPU benchmark: Mvox/s per GPU of the paper's U-Net, bare and through `segment`.

Runs in under 6 minutes on one H100/H200 and prints one JSON line (also written to
``$OUT/gpu_pipeline.json`` when OUT is set):

* bare: forward + softmax of the paper's 2D U-Net (``preset("paper")``, random weights) on
  device-resident tiles, bf16 autocast, channels-last, ``cudnn.benchmark``;
* end to end: `pipeline.segment.segment` on a local cluster of one GPU worker over a
  synthetic uint8 Zarr volume (default 64×2048×2048), uint8 output: once cold (cluster
  start, model load, cuDNN autotuning) and once warm on the same cluster;
* `dask.array.map_overlap(depth=halo, boundary="reflect", trim=True)` with the same resident
  model on the same worker, for the speed-up of the pipelined block tasks;
* the geometry sweep (`bench/bench_pipeline.py`'s): the model's time per kept voxel on
  blocks of ``--edges``, one tile each, to check that larger blocks pay on this GPU;
* the FLOP-bound limit: the model's convolution FLOPs per kept output voxel (counted from the
  layer shapes with forward hooks on the meta device) against ``--peak-tflops`` (989 = H100
  SXM dense bf16), and each measured rate as a fraction of it.

    python3 bench/gpu_pipeline.py                # on the GPU machine
    python3 bench/gpu_pipeline.py --smoke        # a tiny CPU run that checks the script works
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 2048, 2048), metavar=("Z", "Y", "X"))
    p.add_argument("--block", type=int, nargs=3, default=(4, 1024, 1024), metavar=("Z", "Y", "X"), help="the pipeline's default")
    p.add_argument("--tile", type=int, nargs=2, default=None, metavar=("Y", "X"),
                   help="legal input tile (default: the pipeline's for GPU workers, one tile per block plane)")
    p.add_argument("--edges", type=int, nargs="+", default=(512, 1024, 2048),
                   help="block edges timed one tile each by the geometry sweep (bench_pipeline.geometry_sweep)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--preset", default="paper")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--bare-seconds", type=float, default=20.0, help="time budget of the bare measurement")
    p.add_argument(
        "--variant", nargs="+", default=["", "blocks_per_task=4", "queue_depth=2"], metavar="KEY=VALUE[,KEY=VALUE]",
        help="SegmentConfig changes to run on the warm cluster ('' = defaults; the first is the headline)",
    )
    p.add_argument("--time-budget", type=float, default=330.0, help="seconds; later variants are skipped past 60%%")
    p.add_argument("--no-dask", action="store_true", help="skip the dask map_overlap comparison")
    p.add_argument("--smoke", action="store_true", help="tiny model and volume on the CPU (a check)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.block, args.tile, args.preset = (4, 128, 128), (2, 64, 64), None, "tiny"
        args.bare_seconds, args.batch_size, args.edges = 2.0, 2, (64, 128)
    return args


def model_config(args: argparse.Namespace):
    from unetcore.config import preset

    config = preset(args.preset)
    return config.replace(base_channels=4) if args.smoke else config


def conv_flops(config, tile: tuple[int, ...]) -> int:
    """FLOPs (2 per multiply-add) of every convolution for one tile, from the layer shapes."""
    import torch

    from unetcore.model import UNet

    model = UNet(config).to("meta").eval()
    total = [0]

    def hook(module, inputs, output) -> None:
        taps = math.prod(module.kernel_size) * module.in_channels // module.groups
        total[0] += 2 * output.numel() * taps

    for m in model.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(1, config.in_channels, *tile, device="meta"))
    return total[0]


def write_volume(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
    """A synthetic uint8 EM volume, made from one synthetic stack repeated (fast to make)."""
    import zarr

    from unetcore.synthetic import synthetic_em_volume

    tile = synthetic_em_volume((min(shape[0], 8), min(shape[1], 512), min(shape[2], 512)), seed=0).image
    reps = [math.ceil(s / t) for s, t in zip(shape, tile.shape)]
    image = np.tile(tile, reps)[: shape[0], : shape[1], : shape[2]]
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", overwrite=True)[:] = image


def predict_config(config, args: argparse.Namespace):
    """The predictor's settings a worker gets: the given tile, or the cap that covers a block's
    plane with one tile (`pipeline.prepare.tile_cap`, as `segment` sends it)."""
    from pipeline.plan import make_plan
    from pipeline.prepare import tile_cap
    from unetcore.predict import PredictConfig

    if args.tile:
        return PredictConfig(tile_shape=tuple(args.tile), batch_size=args.batch_size)
    cap = tile_cap(make_plan("in", "out", tuple(args.block), config, block_shape=tuple(args.block)), config)
    return PredictConfig(batch_size=args.batch_size, max_out_tile=cap)


def tiles_of(config, args: argparse.Namespace, shape: tuple[int, int, int]) -> tuple[int, tuple[int, ...]]:
    """Tiles the pipeline computes for the volume, and their input shape."""
    from pipeline.plan import make_plan
    from unetcore.predict import plan_tiles

    plan = make_plan("in", "out", shape, config, block_shape=tuple(args.block))
    pc = predict_config(config, args)
    total, in_tile = 0, None
    for b in plan.block_ids():
        w = plan.block(b).write_roi.shape
        tp = plan_tiles(config, tuple(w[1:]), pc.tile_shape, pc)
        total += w[0] * math.prod(tp.counts)
        in_tile = in_tile or tp.in_tile
    return total, in_tile


def bare(config, args: argparse.Namespace, in_tile: tuple[int, ...], device) -> float:
    """Seconds per tile: bf16 autocast forward + softmax on device-resident tiles."""
    import torch

    from unetcore.model import UNet

    torch.manual_seed(0)
    model = UNet(config).to(device).eval()
    cuda = device.type == "cuda"
    x = torch.randn(args.batch_size, 1, *in_tile, device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            torch.softmax(model(x).float(), 1)[:, 1]

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):  # cuDNN autotuning and warm-up
        step()
    sync()
    reps, t0 = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - t0 < args.bare_seconds and reps < 500:
        step()
        reps += 1
        if reps % 10 == 0:
            sync()
    sync()
    return (time.perf_counter() - t0) / (reps * args.batch_size)


def predictor_block_seconds(config, args: argparse.Namespace, device) -> float:
    """Seconds per block of `TilePredictor.predict_region` in this process (no Dask, no I/O)."""
    import torch

    from pipeline.plan import model_context
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import TilePredictor

    torch.manual_seed(0)
    pc = replace(predict_config(config, args), device=device.type)
    predictor = TilePredictor(UNet(config), Normalization(), pc)
    (_, (ly, hy), (lx, hx)) = model_context(config)
    bz, by, bx = args.block
    data = np.random.default_rng(0).integers(0, 256, (bz, by + ly + hy, bx + lx + hx), dtype=np.uint8)
    predictor.predict_region(list(data), (ly, lx), (hy, hx))  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < args.bare_seconds / 2 and reps < 50:
        predictor.predict_region(list(data), (ly, lx), (hy, hx))
        reps += 1
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from pipeline.cluster import connect
    from pipeline.segment import SegmentConfig, segment
    from unetcore import geometry
    from unetcore.checkpoint import save_checkpoint
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    from pipeline.worker import keep_large_buffers

    keep_large_buffers()  # the in-process baselines get the heap settings the workers get
    t_start = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emunet-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = model_config(args)
    shape = tuple(args.shape)
    voxels = math.prod(shape)

    n_tiles, in_tile = tiles_of(config, args, shape)
    flops_tile = conv_flops(config, in_tile)
    kept_per_tile = voxels / n_tiles  # output voxels kept per computed tile, over the volume
    flops_per_voxel = flops_tile / kept_per_tile
    flop_bound = args.peak_tflops * 1e12 / flops_per_voxel  # voxels/s at peak

    t_tile = bare(config, args, in_tile, device)
    from bench.bench_pipeline import geometry_sweep  # is one tile per larger block faster per kept voxel here?

    sweep = geometry_sweep(config, list(args.edges), device=device.type, rounds=2, planes=args.block[0], batch_size=args.batch_size)
    t_block = predictor_block_seconds(config, args, device)
    predictor_vps = math.prod(args.block) / t_block
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to the worker
    bare_vps = voxels / (n_tiles * t_tile)

    torch.manual_seed(0)
    ckpt = save_checkpoint(workdir / "model.safetensors", UNet(config), Normalization())
    src, warm_src = workdir / "in.zarr", workdir / "warm.zarr"
    chunks = (args.block[0], min(256, args.block[1]), min(256, args.block[2]))
    write_volume(src, shape, chunks)
    warm_shape = (args.block[0], min(shape[1], args.block[1]), min(shape[2], args.block[2]))
    write_volume(warm_src, warm_shape, chunks)
    seg = SegmentConfig(
        block_shape=tuple(args.block), tile_shape=tuple(args.tile) if args.tile else None,
        batch_size=args.batch_size, dtype="uint8",
        device=device.type, progress=False, overwrite=True, workers=1,
        torch_threads=2 if args.smoke else None,
    )  # fmt: skip
    t0 = time.perf_counter()
    with connect(seg.cluster()) as cluster:
        t_cluster = time.perf_counter() - t0
        first = segment(warm_src, workdir / "warm-out.zarr", ckpt, seg, client=cluster.client)  # load + autotune
        cold_seconds = time.perf_counter() - t0
        variants: dict[str, Any] = {}
        warm = None
        for text in args.variant:  # the first one is the headline figure
            changes = {k: int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}
            name = text or "defaults"
            if warm is not None and time.perf_counter() - t_start > args.time_budget * 0.6:
                variants[name] = "skipped: time budget"
                continue
            run = segment(src, workdir / "out.zarr", ckpt, replace(seg, **changes), client=cluster.client)
            variants[name] = {
                "mvox_s": round(run.voxels_per_second / 1e6, 3), "seconds": round(run.seconds, 2),
                "stage_seconds": run.stage_seconds, "ok": run.ok,
            }  # fmt: skip
            warm = warm or run
        kind = cluster.kind
        t_dask = None
        if not args.no_dask and time.perf_counter() - t_start < args.time_budget * 0.7:
            from bench.pipeline_baselines import run_dask  # the CPU bench's map_overlap, uint8 output here

            t_dask = run_dask(cluster.client, src, workdir / "dask.zarr", warm.plugin, geometry.halo(config)[0], args.block,
                              dtype="uint8")
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "preset": args.preset,
        "volume_shape": list(shape),
        "block_shape": list(args.block),
        "input_tile": list(in_tile),
        "output_tile": list(geometry.output_shape(config, in_tile)),
        "kept_step": list(geometry.exact_step(config, in_tile)),
        "batch_size": args.batch_size,
        "tiles": n_tiles,
        "gflop_per_tile": round(flops_tile / 1e9, 3),
        "mflop_per_kept_voxel": round(flops_per_voxel / 1e6, 4),
        "peak_tflops": args.peak_tflops,
        "flop_bound_mvox_s": round(flop_bound / 1e6, 2),
        "bare_mvox_s": round(bare_vps / 1e6, 3),
        "bare_tflops_achieved": round(flops_tile / t_tile / 1e12, 2),
        "bare_fraction_of_flop_bound": round(bare_vps / flop_bound, 4),
        "predictor_mvox_s": round(predictor_vps / 1e6, 3),  # predict_region in one process, no I/O
        "predictor_over_bare": round(predictor_vps / bare_vps, 4),
        "segment_over_predictor": round(warm.voxels_per_second / predictor_vps, 4),
        "cluster": kind,
        "cluster_start_s": round(t_cluster, 2),
        "cold_start_s": round(cold_seconds, 2),  # cluster + model load + autotune on one block
        "segment_seconds": round(warm.seconds, 2),
        "segment_run_seconds": round(warm.run_seconds, 2),
        "segment_mvox_s": round(warm.voxels_per_second / 1e6, 3),
        "segment_steady_mvox_s": round(warm.steady_voxels_per_second / 1e6, 3),
        "end_to_end_with_cold_start_mvox_s": round(voxels / (warm.seconds + cold_seconds) / 1e6, 3),
        "pipeline_efficiency": round(warm.voxels_per_second / bare_vps, 4),
        "segment_fraction_of_flop_bound": round(warm.voxels_per_second / flop_bound, 4),
        "dask_map_overlap_seconds": round(t_dask, 2) if t_dask else None,
        "dask_map_overlap_mvox_s": round(voxels / t_dask / 1e6, 3) if t_dask else None,
        "speedup_vs_dask": round(t_dask / warm.seconds, 3) if t_dask else None,
        "stage_seconds": warm.stage_seconds,
        "variants": variants,
        "geometry": sweep,
        "worker_peak_rss_mb": [round(v / 2**20) for v in warm.worker_peak_rss.values()],
        "ok": warm.ok and first.ok,
        "failed": [f.to_dict() for f in warm.failed[:3]],
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    line = json.dumps(result)
    print(line, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_pipeline.json").write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
