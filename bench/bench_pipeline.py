"""Benchmarks of the execution plane, measured side by side in one run (no assertions).

Same model (random weights, fixed seed), same synthetic volume, same machine:

1. efficiency  end-to-end voxels/s of `segment` on a local cluster ÷ the bare model's voxels/s
               on the same tiles in one process (forward + softmax only, no I/O);
2. dask        `dask.array.map_overlap(depth=halo, boundary="reflect", trim=True)` running the
               same model on the same warm cluster: speed and where its output differs;
3. monai       MONAI `sliding_window_inference` (overlap 0.25, gaussian) with a same-padded
               U-Net of equal depth and width: voxels/s and seam error (deviation from that
               model's own whole-image prediction), next to emunet's;
4. memory      peak RSS per worker for a volume 8× larger (fresh clusters): the ratio;
5. planning    plan + output metadata + ledger + all task descriptions for a 1 TB virtual
               volume (nothing but metadata written): seconds and client memory;
6. halo        fraction of computed voxels discarded at the default tile and block, and the
               tile that minimises it within a memory budget;
7. geometry    the model's measured time per kept voxel for square blocks of several sizes,
               each covered by one tile, alternated: does a larger block (less halo, fewer
               FLOPs per kept voxel) pay on this device?

    .venv/bin/python bench/bench_pipeline.py                   # all, tiny model, 32×1024×1024
    .venv/bin/python bench/bench_pipeline.py --only halo,planning
    .venv/bin/python bench/bench_pipeline.py --preset cpu --shape 8 1024 1024
    .venv/bin/python bench/bench_pipeline.py --only geometry --preset cpu   # the shipped model's width

Each section prints one JSON line; a summary follows. Keep runs under ~10 minutes.
Sections 2 and 3 (dask, monai: other systems run side by side) live in `bench/pipeline_baselines.py`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("halo", "planning", "efficiency", "memory", "dask", "monai", "geometry")


# -- setup ----------------------------------------------------------------------------------
def make_checkpoint(workdir: Path, preset_name: str, base_channels: int | None) -> Path:
    import torch

    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    config = preset(preset_name)
    if base_channels:
        config = config.replace(base_channels=base_channels)
    torch.manual_seed(0)
    return save_checkpoint(workdir / f"{preset_name}.safetensors", UNet(config), Normalization())


def make_volume(path: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> Path:
    import zarr

    from unetcore.synthetic import synthetic_em_volume

    if not path.exists():
        image = synthetic_em_volume(shape, seed=0).image
        zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8")[:] = image
    return path


def load(checkpoint: Path):
    from unetcore.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def predict_config(args: argparse.Namespace):
    from unetcore.predict import PredictConfig

    return PredictConfig(batch_size=args.batch_size, tile_shape=tuple(args.tile) if args.tile else None)


def segment_config(args: argparse.Namespace, **kw: Any):
    from pipeline.segment import SegmentConfig

    return SegmentConfig(
        block_shape=tuple(args.block), batch_size=args.batch_size, tile_shape=tuple(args.tile) if args.tile else None,
        dtype="float32", progress=False, torch_threads=args.torch_threads, **kw,
    )  # fmt: skip


# -- 6. halo overhead -----------------------------------------------------------------------
def tiles_for_block(model_config, block_yx: tuple[int, int], tile, pc) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(tiles per slice, input tile, output tile) the predictor uses for one block."""
    from unetcore.predict import plan_tiles

    plan = plan_tiles(model_config, block_yx, tile, pc)
    return math.prod(plan.counts), plan.in_tile, plan.out_tile


def halo_overhead(model_config, block_yx, tile, pc) -> dict[str, float]:
    n, in_tile, out_tile = tiles_for_block(model_config, block_yx, tile, pc)
    kept = math.prod(block_yx)
    computed = n * math.prod(out_tile)
    from pipeline.plan import model_context

    (_, (ly, hy), (lx, hx)) = model_context(model_config)
    read = (block_yx[0] + ly + hy) * (block_yx[1] + lx + hx)
    return {
        "tile": list(in_tile),
        "tiles_per_slice": n,
        "discarded_fraction": round(1 - kept / computed, 4),  # output voxels computed, not kept
        "input_fed_per_kept_voxel": round(n * math.prod(in_tile) / kept, 3),  # model input voxels
        "read_amplification": round(read / kept, 3),  # block read ROI ÷ write ROI
    }


def bench_halo(args: argparse.Namespace) -> dict[str, Any]:
    from unetcore import geometry
    from unetcore.config import preset
    from unetcore.predict import PredictConfig

    out: dict[str, Any] = {"block_yx": args.block[1:], "budget_bytes": args.budget}
    names = [args.preset] + (["paper"] if args.preset != "paper" else [])
    for name in names:
        config = preset(name)
        if name == args.preset and args.base_channels:
            config = config.replace(base_channels=args.base_channels)
        pc = PredictConfig(batch_size=args.batch_size)
        default = halo_overhead(config, tuple(args.block[1:]), None, pc)
        biggest = geometry.largest_tile(config, args.budget, batch=args.batch_size)
        best = None
        for size in geometry.legal_input_sizes(config, 0, up_to=biggest[0]):
            tile = (size, size)
            if min(geometry.exact_step(config, tile)) < 1:
                continue
            h = halo_overhead(config, tuple(args.block[1:]), tile, pc)
            if best is None or h["discarded_fraction"] < best["discarded_fraction"]:
                best = h
        # and with blocks as large as the largest tile's kept output (fewer partial tiles)
        step = geometry.exact_step(config, biggest)
        big_block = tuple(max(s * ((b + s - 1) // s), s) for s, b in zip(step, args.block[1:]))
        out[name] = {
            "halo": list(geometry.halo(config)),
            "exact_context": [list(c) for c in geometry.exact_context(config)],
            "default": default,
            "largest_tile_in_budget": list(biggest),
            "best_tile_for_block": best,
            "largest_tile_with_block_multiple_of_step": {"block_yx": list(big_block), **halo_overhead(config, big_block, biggest, pc)},
        }
    return out


# -- 7. block geometry, measured ------------------------------------------------------------
def geometry_sweep(config, edges, *, device: str = "cpu", threads: int = 1, rounds: int = 2, planes: int = 1,
                   batch_size: int = 1) -> dict[str, Any]:  # fmt: skip
    """Seconds per kept Mvox of the bare predictor (`TilePredictor.predict_stack`, random
    weights) on a square block of each edge covered by one tile, sizes alternated per round
    (best kept); FLOPs per kept voxel from the layer shapes. Shared with `bench/gpu_pipeline.py`."""
    import numpy as np
    import torch

    from unetcore.flops import forward_flops
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor, plan_tiles

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UNet(config).eval()
    flop_model = UNet(config).to("meta")
    rng = np.random.default_rng(0)
    rows: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):
        for edge in edges:
            pc = PredictConfig(batch_size=batch_size, device=device, max_out_tile=edge + 400)
            tiles = plan_tiles(config, (edge, edge), None, pc)
            image = rng.integers(0, 256, (planes, edge, edge), dtype=np.uint8)
            predictor = TilePredictor(model, Normalization(), pc)
            predictor.predict_stack(image[:1, : min(edge, 256), : min(edge, 256)])  # warm-up (cuDNN autotuning)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            predictor.predict_stack(image)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            kept = planes * edge * edge
            row = rows.setdefault(edge, {
                "tile": list(tiles.in_tile), "tiles_per_plane": math.prod(tiles.counts),
                "input_per_kept_voxel": round(math.prod(tiles.counts) * math.prod(tiles.in_tile) / edge**2, 3),
                "mflop_per_kept_voxel": round(math.prod(tiles.counts) * forward_flops(flop_model, tiles.in_tile) / edge**2 / 1e6, 4),
                "seconds_per_kept_mvox": [],
            })  # fmt: skip
            row["seconds_per_kept_mvox"].append(round(seconds / kept * 1e6, 3))
    base = min(rows[edges[0]]["seconds_per_kept_mvox"])
    base_flops = rows[edges[0]]["mflop_per_kept_voxel"]
    for row in rows.values():
        row["speed_vs_first"] = round(base / min(row["seconds_per_kept_mvox"]), 3)  # > 1: faster per kept voxel
        row["flops_predict"] = round(base_flops / row["mflop_per_kept_voxel"], 3)  # the speed-up FLOPs alone would give
    return {"device": device, "threads": threads, "planes": planes, "rounds": rounds, "edges": {str(e): r for e, r in rows.items()}}


# -- 5. planning a 1 TB virtual volume ------------------------------------------------------
def bench_planning(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import psutil
    import zarr

    from pipeline.ledger import Ledger
    from pipeline.output import OutputOptions, create_output
    from pipeline.plan import plan_for_volume
    from pipeline.segment import SegmentConfig, _groups, segment_ops
    from pipeline.volume import open_volume
    from pipeline.worker import GroupJob
    from unetcore.config import preset

    shape = (4096, 16384, 16384)  # 1.1 TB of uint8
    src = workdir / "virtual-1tb.zarr"
    if not src.exists():
        zarr.create_array(str(src), shape=shape, chunks=(64, 512, 512), dtype="uint8")  # metadata only
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    t0 = time.perf_counter()
    volume = open_volume(str(src))
    plan = plan_for_volume(volume, str(workdir / "virtual-out.zarr"), preset(args.preset), block_shape=tuple(args.block))
    create_output(plan, OutputOptions(), overwrite=True)
    t_plan = time.perf_counter() - t0
    done = Ledger(plan.output_url, plan.num_blocks).done_mask()
    todo = (i for i in range(plan.num_blocks) if not done[i])
    payload = {"plan": plan.to_dict(), "run": "bench"}
    size = SegmentConfig().group_size(tuple(plan.block_shape))
    jobs = sum(1 for ids in _groups(todo, size) if GroupJob(ids, payload, "x", segment_ops))
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "volume_shape": list(shape),
        "terabytes": round(math.prod(shape) / 1e12, 3),
        "blocks": plan.num_blocks,
        "tasks": jobs,
        "blocks_per_task": size,
        "plan_and_output_seconds": round(t_plan, 3),
        "seconds_with_all_task_descriptions": round(seconds, 3),
        "python_peak_alloc_mb": round(peak / 2**20, 1),
        "rss_growth_mb": round((proc.memory_info().rss - rss0) / 2**20, 1),
        "plan_json_bytes": len(plan.to_json()),
    }


# -- 1. efficiency and 4. memory --------------------------------------------------------------
def bare_seconds(args: argparse.Namespace, checkpoint: Path, shape: tuple[int, int, int], threads: int) -> dict[str, Any]:
    """Forward + softmax time of every tile the pipeline computes, in this process."""
    import torch

    from pipeline.plan import SegmentPlan, make_plan

    ckpt = load(checkpoint)
    torch.set_num_threads(threads)
    pc = predict_config(args)
    plan: SegmentPlan = make_plan("in", "out", shape, ckpt.config, block_shape=tuple(args.block))
    counts: dict[tuple[int, ...], int] = {}
    for b in plan.block_ids():
        w = plan.block(b).write_roi.shape
        n, in_tile, _ = tiles_for_block(ckpt.config, tuple(w[1:]), pc.tile_shape, pc)
        counts[in_tile] = counts.get(in_tile, 0) + n * w[0]
    total = 0.0
    model = ckpt.model.eval()
    for in_tile, n in counts.items():
        x = torch.randn(args.batch_size, 1, *in_tile)
        with torch.inference_mode():
            torch.softmax(model(x), 1)  # warm-up
            reps, t0 = 0, time.perf_counter()
            while reps < 3 or (time.perf_counter() - t0 < 5 and reps < 20):
                torch.softmax(model(x), 1)[:, 1].numpy()
                reps += 1
            per_batch = (time.perf_counter() - t0) / reps
        total += math.ceil(n / args.batch_size) * per_batch
    voxels = math.prod(shape)
    return {"tiles": {str(k): v for k, v in counts.items()}, "threads": threads, "seconds": round(total, 3), "voxels_per_second": round(voxels / total, 1)}


def bench_efficiency_memory(args: argparse.Namespace, workdir: Path, checkpoint: Path) -> dict[str, Any]:
    from pipeline.segment import segment

    big = tuple(args.shape)
    small = (max(big[0] // 2, 1), big[1] // 2, big[2] // 2)
    src_big = make_volume(workdir / f"in-{'x'.join(map(str, big))}.zarr", big, tuple(args.block))
    src_small = make_volume(workdir / f"in-{'x'.join(map(str, small))}.zarr", small, tuple(args.block))
    bare = bare_seconds(args, checkpoint, big, os.cpu_count() or 1)
    bare_1 = bare_seconds(args, checkpoint, big, 1)
    runs = {}
    for name, src, shape in (("small", src_small, small), ("big", src_big, big)):
        t0 = time.perf_counter()  # the whole call: cluster start, model load, blocks
        r = segment(src, workdir / f"out-{name}.zarr", checkpoint, segment_config(args, workers=args.workers, overwrite=True))
        runs[name] = {
            "shape": list(shape),
            "blocks": r.total_blocks,
            "seconds_end_to_end": round(time.perf_counter() - t0, 3),
            "run_seconds": round(r.run_seconds, 3),
            "voxels_per_second_end_to_end": round(r.voxels / (time.perf_counter() - t0), 1),
            "voxels_per_second_steady": round(r.steady_voxels_per_second, 1),
            "stage_seconds": r.stage_seconds,
            "worker_peak_rss_mb": sorted(round(v / 2**20, 1) for v in r.worker_peak_rss.values()),
            "ok": r.ok,
        }
    # Matched parallelism: one worker with one thread against the bare model on one thread.
    t0 = time.perf_counter()
    one = segment(src_big, workdir / "out-one.zarr", checkpoint, segment_config(args, workers=1, overwrite=True))
    one_e2e = one.voxels / (time.perf_counter() - t0)
    runs["one_worker"] = {"seconds_end_to_end": round(time.perf_counter() - t0, 3), "run_seconds": round(one.run_seconds, 3), "stage_seconds": one.stage_seconds}
    e2e = runs["big"]["voxels_per_second_end_to_end"]
    steady = runs["big"]["voxels_per_second_steady"]
    peak = lambda name: max(runs[name]["worker_peak_rss_mb"])  # noqa: E731
    ideal = bare_1["voxels_per_second"] * args.workers * args.torch_threads  # perfect scaling of 1 thread
    return {
        "bare": bare,
        "bare_one_thread": bare_1,
        "runs": runs,
        "efficiency_end_to_end": round(e2e / bare["voxels_per_second"], 3),
        "efficiency_steady": round(steady / bare["voxels_per_second"], 3),
        "efficiency_vs_one_thread_times_workers": round(e2e / ideal, 3),
        "efficiency_one_worker_one_thread_end_to_end": round(one_e2e / bare_1["voxels_per_second"], 3),
        "efficiency_one_worker_one_thread_steady": round(one.steady_voxels_per_second / bare_1["voxels_per_second"], 3),
        "compute_busy_fraction": round(runs["big"]["stage_seconds"]["compute"] / max(runs["big"]["stage_seconds"]["wall"], 1e-9), 3),
        "memory_ratio_8x": round(peak("big") / peak("small"), 3),
    }


def baselines():
    """Sections 2 and 3 (other systems run side by side), in `bench/pipeline_baselines.py`."""
    from bench import pipeline_baselines

    return pipeline_baselines


# -- main ---------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--preset", default="tiny", help="model preset (random weights)")
    p.add_argument("--base-channels", type=int, default=None, help="override the preset's width")
    p.add_argument("--shape", type=int, nargs=3, default=(32, 1024, 1024), metavar=("Z", "Y", "X"))
    p.add_argument("--block", type=int, nargs=3, default=(8, 512, 512), metavar=("Z", "Y", "X"))
    p.add_argument("--tile", type=int, nargs=2, default=None, metavar=("Y", "X"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--torch-threads", type=int, default=1, help="per worker")
    p.add_argument("--monai-slices", type=int, default=4, help="slices of the volume for the MONAI section")
    p.add_argument("--repeats", type=int, default=1, help="emunet/dask alternations in the dask section")
    p.add_argument("--emunet-geometry", choices=("defaults", "same"), default="defaults",
                   help="dask section: emunet's own default blocks and tiles, or the --block/--tile dask runs on")
    p.add_argument("--budget", type=int, default=2 << 30, help="activation memory budget (bytes) for the halo section")
    p.add_argument("--edges", type=int, nargs="+", default=(512, 1024, 1536, 2048), help="block edges of the geometry section")
    p.add_argument("--planes", type=int, default=2, help="planes per block in the geometry section")
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    from pipeline.worker import keep_large_buffers

    keep_large_buffers()  # the in-process baselines get the heap settings the workers get
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emunet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(workdir, args.preset, args.base_channels)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "preset": args.preset,
        "shape": list(args.shape),
        "block": list(args.block),
        "workers": args.workers,
        "torch_threads_per_worker": args.torch_threads,
    }
    print(json.dumps({"meta": meta}), flush=True)
    results: dict[str, Any] = {"meta": meta}
    runners = {
        "halo": lambda: bench_halo(args),
        "planning": lambda: bench_planning(args, workdir),
        "efficiency": lambda: bench_efficiency_memory(args, workdir, checkpoint),
        "memory": None,  # measured with efficiency (same runs)
        "dask": lambda: baselines().bench_dask(args, workdir, checkpoint),
        "monai": lambda: baselines().bench_monai(args, workdir, checkpoint),
        "geometry": lambda: geometry_sweep(
            load(checkpoint).config, list(args.edges), threads=args.torch_threads, rounds=max(args.repeats, 2),
            planes=args.planes, batch_size=args.batch_size,
        ),
    }
    for name in only:
        if name not in runners:
            raise SystemExit(f"expected sections from {SECTIONS}, got {name!r}")
        if runners[name] is None:
            if "efficiency" not in only:
                only.append("efficiency")
            continue
        t0 = time.perf_counter()
        results[name] = runners[name]()
        results[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({name: results[name]}), flush=True)
    results["meta"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps({"summary": _summary(results)}), flush=True)
    return results


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if "efficiency" in r:
        keys = ("efficiency_end_to_end", "efficiency_steady", "efficiency_one_worker_one_thread_end_to_end", "memory_ratio_8x")
        s |= {k: r["efficiency"][k] for k in keys}
    if "dask" in r:
        s |= {"speedup_vs_dask": r["dask"]["speedup_vs_dask"], "dask_max_abs_diff": r["dask"]["dask_depth_halo_vs_emunet"]["max_abs_diff"]}
    if "monai" in r and "skipped" not in r["monai"]:
        s |= {"speed_ratio_emunet_over_monai": r["monai"]["speed_ratio_emunet_over_monai"], "monai_seam_max": r["monai"]["monai_tiled_vs_whole_max_abs"]}
    if "planning" in r:
        s |= {"plan_1tb_seconds": r["planning"]["seconds_with_all_task_descriptions"], "plan_1tb_peak_mb": r["planning"]["python_peak_alloc_mb"]}
    if "geometry" in r:
        s |= {"geometry_speed_vs_first": {e: row["speed_vs_first"] for e, row in r["geometry"]["edges"].items()}}
    if "halo" in r:
        s |= {"halo_discarded_default": r["halo"][r["meta"]["preset"]]["default"]["discarded_fraction"]}
    s["load_average"] = [r["meta"]["load_average_start"], r["meta"]["load_average_end"]]
    return s


if __name__ == "__main__":
    main()
