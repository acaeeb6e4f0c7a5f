"""Benchmark: `segment` end to end ÷ the best way to run the bare model on the same cores.

One run measures, side by side, on the same machine, model and volume:

* **bare, one process**: the model alone (forward + softmax, no I/O, no pipeline, in the
  channels-last layout the predictor uses) on the tiles `segment` computes for the volume with its defaults (default blocks, one tile per
  block plane, as many tiles per pass as a CPU pass holds), in one process with all cores as
  torch threads, with the glibc heap settings the workers use
  (`pipeline.worker.keep_large_buffers`);
* **bare, one process per worker**: the same tiles split over ``--workers`` processes
  running at the same time, one torch thread each (what a CPU cluster of single-threaded
  workers can do at best);
* **segment**: `pipeline.segment.segment` on a local cluster of ``--workers`` workers with
  the pipeline's defaults (blocks, tiles, batch, output dtype, one thread per worker), from
  the call to the result (cluster start, model load, reads, writes, ledger): the user's
  end-to-end figure, and its steady rate (first task to last result).

The headline is **segment end to end ÷ the better bare figure** (voxels of the volume per
second on both sides), best against best over ``--rounds`` rounds, each round running the
bare sides and then `segment` back to back (these shared cores drift by 10–50 % within
minutes); the per-round ratios are printed too. Goal (issue #15): ≥ 0.9 on CPU.

``--profiler-ab N`` then runs `segment` 2·N more times on one warm local cluster of each kind,
alternating workers with and without Dask's statistical profiler
(`ClusterConfig.worker_profile`), and prints the ratio of their best steady rates and worker
CPU seconds: the side-by-side measurement behind the clusters' default (profiler off).

``--bare-layouts both`` also times the bare model in the contiguous layout (the ratios stay
against channels-last, the layout `segment`'s predictor runs).

    python bench/bench_efficiency.py [--checkpoint models/isbi2012.safetensors] [--shape 12 1024 1024] [--workers 2] [--rounds 2] [--profiler-ab 2] [--bare-layouts both]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pipeline_tiles(checkpoint: Path, shape: tuple[int, int, int], batch: int) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(input tile, output step, tiles, tiles per pass) that `segment` runs for the volume with
    its defaults on CPU workers: the default blocks, one tile per block plane
    (`pipeline.prepare.tile_cap`), `unetcore.memory.pass_batch` tiles per pass."""
    from pipeline.plan import make_plan
    from pipeline.prepare import tile_cap
    from unetcore.checkpoint import load_checkpoint
    from unetcore.memory import pass_batch
    from unetcore.predict import PredictConfig, plan_tiles

    config = load_checkpoint(checkpoint).config
    plan = make_plan("in", "out", shape, config)
    predict = PredictConfig(batch_size=batch, max_out_tile=tile_cap(plan, config))
    tiles, first = 0, None
    for block_id in plan.block_ids():
        write = plan.block(block_id).write_roi.shape
        tp = plan_tiles(config, tuple(write[1:]), None, predict)
        tiles += write[0] * math.prod(tp.counts)
        first = first or tp
    return first.in_tile, first.step, tiles, pass_batch("cpu", first.in_tile, batch)


def _bare_worker(checkpoint: str, in_tile: tuple[int, ...], tiles: int, batch: int, threads: int, channels_last: bool,
                 start, out) -> None:  # fmt: skip
    """In a fresh process: warm up, wait for the others, then run ``tiles`` tiles; seconds."""
    import torch

    from pipeline.worker import keep_large_buffers
    from unetcore.checkpoint import load_checkpoint

    keep_large_buffers()  # the heap settings a worker runs with (1.5–1.8× on CPU): the bare side gets them too
    torch.set_num_threads(threads)
    model = load_checkpoint(checkpoint).model.eval()
    x = torch.rand(batch, 1, *in_tile)
    if channels_last:  # the layout `TilePredictor` runs (`PredictConfig.channels_last`)
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.softmax(model(x), 1)[:, 1].numpy()  # warm-up
        start.wait()  # every process starts timing together
        t0 = time.perf_counter()
        done = 0
        while done < tiles:
            n = min(batch, tiles - done)
            torch.softmax(model(x[:n]), 1)[:, 1].numpy()
            done += n
        out.put(time.perf_counter() - t0)


def bare(checkpoint: Path, in_tile: tuple[int, ...], tiles: int, batch: int, processes: int, threads: int,
         channels_last: bool = True) -> float:  # fmt: skip
    """Wall seconds for ``tiles`` tiles split over ``processes`` concurrent processes."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    share = [tiles // processes + (1 if i < tiles % processes else 0) for i in range(processes)]
    procs = [ctx.Process(target=_bare_worker, args=(str(checkpoint), in_tile, n, batch, threads, channels_last, start, out)) for n in share]
    for p in procs:
        p.start()
    seconds = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(seconds)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def profiler_ab(src: str, tmp: Path, checkpoint: Path, config, rounds: int) -> None:
    """Steady rate and worker CPU of `segment` on warm clusters with and without the profiler."""
    from distributed import Client

    from pipeline.cluster import ClusterConfig, local_cluster
    from pipeline.segment import segment

    best: dict[bool, tuple[float, float]] = {}
    clients: dict[bool, Client] = {}
    clusters = {on: local_cluster(ClusterConfig(workers=config.workers, worker_profile=on))[0] for on in (True, False)}
    try:
        clients.update({on: Client(cluster) for on, cluster in clusters.items()})
        for i in range(rounds + 1):  # round 0 warms both clusters (model load, first faults) and is not kept
            for on, client in clients.items():
                cpu0 = sum(client.run(_cpu_seconds).values())
                result = segment(src, tmp / f"ab-{on}-{i}.zarr", checkpoint, config, client=client)
                cpu = sum(client.run(_cpu_seconds).values()) - cpu0
                print(f"  profiler {'on ' if on else 'off'} round {i}: steady {result.steady_voxels_per_second / 1e6:.3f} Mvox/s, "
                      f"worker CPU {cpu:.1f} s{' (warm-up)' if i == 0 else ''}", flush=True)
                if i and (on not in best or result.steady_voxels_per_second > best[on][0]):
                    best[on] = (result.steady_voxels_per_second, cpu)
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
    print(json.dumps({"profiler_off_vs_on_steady": round(best[False][0] / best[True][0], 3),
                      "worker_cpu_off_vs_on": round(best[False][1] / best[True][1], 3), "rounds": rounds}))


def _bare_rows(args: argparse.Namespace, in_tile, tiles: int, per_pass: int, cores: int) -> dict[str, float]:
    """Seconds of each bare side in this round (channels-last first, then contiguous if asked)."""
    rows: dict[str, float] = {}
    for layout in ("channels-last", "contiguous")[: 2 if args.bare_layouts == "both" else 1]:
        cl = layout == "channels-last"
        rows[f"bare, 1 process × {cores} threads, {layout}"] = bare(args.checkpoint, in_tile, tiles, per_pass, 1, cores, cl)
        rows[f"bare, {args.workers} processes × 1 thread, {layout}"] = bare(args.checkpoint, in_tile, tiles, per_pass,
                                                                           args.workers, 1, cl)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "isbi2012.safetensors")
    p.add_argument("--shape", type=int, nargs=3, default=(12, 1024, 1024), metavar=("Z", "Y", "X"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="rounds of bare sides then segment, back to back")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--profiler-ab", type=int, default=0, metavar="N", help="alternate N runs with and without the profiler")
    p.add_argument("--bare-layouts", choices=("channels-last", "both"), default="channels-last",
                   help="the bare model's memory layout: the predictor's (channels-last), or that and contiguous side by side")
    args = p.parse_args()

    from bench.bench_pipeline import make_volume
    from pipeline.segment import SegmentConfig, segment

    shape = tuple(args.shape)
    voxels = math.prod(shape)
    cores = os.cpu_count() or 1
    config = SegmentConfig(workers=args.workers, progress=False, overwrite=True)
    in_tile, step, tiles, per_pass = pipeline_tiles(args.checkpoint, shape, config.batch_size)
    print(f"{_dt.date.today()} {platform.machine()}, {cores} CPU cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}; model {args.checkpoint.name}; volume {shape} uint8 (synthetic EM)")
    print(f"bare: tile {in_tile} → step {step}, {tiles} tiles, {per_pass} per pass; {args.rounds} round(s)")

    per_round: list[dict[str, float]] = []  # voxels per second of every side, round by round
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = make_volume(Path(tmp) / "in.zarr", shape, (min(8, shape[0]), 512, 512))
        for i in range(args.rounds):  # these cores drift by 10–50 %: each round's sides run back to back
            rates = {name: voxels / sec for name, sec in _bare_rows(args, in_tile, tiles, per_pass, cores).items()}
            t0 = time.perf_counter()
            result = segment(src, Path(tmp) / "out.zarr", args.checkpoint, config)
            e2e = time.perf_counter() - t0
            assert result.ok, result.failed
            rates[f"segment, {args.workers} workers × 1 thread, end to end"] = voxels / e2e
            rates["segment, steady (first task to last result)"] = result.steady_voxels_per_second
            per_round.append(rates)
            best_bare = max(r for n, r in rates.items() if n.endswith("channels-last"))  # the layout segment runs
            print(f"round {i + 1} (load {os.getloadavg()[0]:.2f}):", flush=True)
            for name, rate in rates.items():
                print(f"  {name:48s} {rate / 1e6:8.3f} Mvox/s   ÷ best bare {rate / best_bare:.3f}", flush=True)
        if args.profiler_ab:
            profiler_ab(src, Path(tmp), args.checkpoint, config, args.profiler_ab)
    names = list(per_round[0])
    best = {n: max(r[n] for r in per_round) for n in names}
    best_bare = max(r for n, r in best.items() if n.endswith("channels-last"))
    e2e_name, steady_name = names[-2], names[-1]
    print(json.dumps({"efficiency_end_to_end": round(best[e2e_name] / best_bare, 3),  # best against best
                      "efficiency_steady": round(best[steady_name] / best_bare, 3),
                      "per_round": [[round(r[e2e_name] / max(v for n, v in r.items() if n.endswith("channels-last")), 3),
                                     round(r[steady_name] / max(v for n, v in r.items() if n.endswith("channels-last")), 3)]
                                    for r in per_round],
                      "mvox_per_s_best": {n: round(v / 1e6, 3) for n, v in best.items()},
                      "run_seconds": round(result.run_seconds, 2), "stage_seconds": result.stage_seconds,
                      "blocks": result.total_blocks, "blocks_per_task": result.blocks_per_task,
                      "load_end": round(os.getloadavg()[0], 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
