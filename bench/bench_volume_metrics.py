"""Benchmark: volume metrics (`emunet evaluate SEG GT` on label Zarrs) on a volume many times
larger than a worker's memory limit.

Two uint64 label volumes (GT and a segmentation with splits and merges) are written to
Zarr by the workers of one cluster; a fresh cluster whose workers each have
``--memory-limit`` then computes VI split/merge, adapted Rand error and the CREMI score from
the contingency table accumulated over blocks (`pipeline.instances.volume_metrics`). The
run prints the volume's bytes ÷ the memory limit, seconds and voxels/s, each worker's peak
RSS ÷ its limit, and whether any worker died (the nanny kills a worker at 95 % of its limit).

The labels are exact by construction ("neurons": boxes of 24 × 48 × 48 voxels with 1-voxel
background walls; the segmentation splits every box at half its height and merges
neighbouring box pairs along x), so the expected scores are known in closed form and the
run checks them (printed as ``expected``).

    python bench/bench_volume_metrics.py [--memory-limit 400MB] [--factor 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOX = (24, 48, 48)  # voxels of one GT "neuron", walls included


def _labels(offset: tuple[int, ...], shape: tuple[int, ...], grid: tuple[int, ...], seg: bool) -> np.ndarray:
    z, y, x = np.ogrid[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))]
    bz, by, bx = z // BOX[0], y // BOX[1], x // BOX[2]
    wall = (z % BOX[0] == 0) | (y % BOX[1] == 0) | (x % BOX[2] == 0)
    if not seg:
        ids = (bz * grid[1] + by) * grid[2] + bx + 1
        return np.where(wall, 0, ids).astype(np.uint64)
    half = (z % BOX[0]) >= BOX[0] // 2  # split every box in z ...
    ids = ((bz * grid[1] + by) * ((grid[2] + 1) // 2) + bx // 2) * 2 + half + 1  # ... and merge x pairs
    return np.broadcast_to(ids, shape).astype(np.uint64)  # walls belong to a segment (GT 0 ignores them)


def expected_scores(shape: tuple[int, int, int]) -> dict[str, float]:
    """The scores of the construction above, from its table counted in memory per box type."""
    from pipeline.instances.volume_metrics import scores_from_table

    grid = tuple(math.ceil(s / b) for s, b in zip(shape, BOX, strict=True))
    g_parts, s_parts, c_parts = [], [], []
    for bz in range(grid[0]):  # one z-row of boxes at a time: tables only, no voxels of the volume
        z0, z1 = bz * BOX[0], min(shape[0], (bz + 1) * BOX[0])
        gt = _labels((z0, 0, 0), (z1 - z0, shape[1], shape[2]), grid, seg=False)
        sg = _labels((z0, 0, 0), (z1 - z0, shape[1], shape[2]), grid, seg=True)
        keep = gt != 0
        keys, counts = np.unique(gt[keep] << np.uint64(32) | sg[keep], return_counts=True)  # ids < 2³² here
        g_parts.append(keys >> np.uint64(32))
        s_parts.append(keys & np.uint64(0xFFFFFFFF))
        c_parts.append(counts)
    return scores_from_table(np.concatenate(g_parts), np.concatenate(s_parts), np.concatenate(c_parts))


def write_volumes(root: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int], workers: int) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    grid = tuple(math.ceil(s / b) for s, b in zip(shape, BOX, strict=True))

    def block(seg: bool, block_info=None) -> np.ndarray:
        info = block_info[None]
        offset = tuple(lo for lo, _ in info["array-location"])
        return _labels(offset, tuple(info["chunk-shape"]), grid, seg)

    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        for name, seg in (("gt", False), ("seg", True)):
            arr = da.map_blocks(block, seg, chunks=tuple((c,) * (s // c) + ((s % c,) if s % c else ()) for s, c in zip(shape, chunks, strict=True)),
                                dtype=np.uint64, meta=np.empty((0, 0, 0), np.uint64))
            arr.to_zarr(str(root / f"{name}.zarr"), overwrite=True, compute=True)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory-limit", default="400MB", help="per worker (Dask memory_limit)")
    p.add_argument("--factor", type=float, default=8.0, help="GT + SEG bytes ÷ one worker's memory limit")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunks", type=int, nargs=3, default=(32, 256, 256))
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()

    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    from pipeline.instances.volume_metrics import LabelSource, default_block, volume_scores

    limit = parse_bytes(args.memory_limit)
    voxels = args.factor * limit / 16  # two uint64 volumes
    z = math.ceil(voxels / (1024 * 1024) / args.chunks[0]) * args.chunks[0]
    shape = (z, 1024, 1024)
    data_bytes = 16 * math.prod(shape)
    print(f"{_dt.date.today()} {platform.machine()} {os.cpu_count()} CPU(s), Python {platform.python_version()}")
    print(f"volume {shape} uint64 × 2 (GT, SEG) = {data_bytes / 1e9:.2f} GB = {data_bytes / limit:.1f}× a worker's "
          f"memory limit ({args.memory_limit}); {args.workers} workers × 1 thread")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_volumes(root, shape, tuple(args.chunks), args.workers)
        print(f"written in {time.perf_counter() - t0:.1f} s ({sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) / 1e6:.0f} MB on disk)")

        seg, gt = LabelSource(str(root / "seg.zarr")), LabelSource(str(root / "gt.zarr"))
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=limit,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(lambda: __import__("pipeline.instances.volume_metrics"))  # imports before timing
            before = set(client.scheduler_info()["workers"])
            t0 = time.perf_counter()
            scores = volume_scores(seg, gt, client=client)
            seconds = time.perf_counter() - t0
            after = set(client.scheduler_info()["workers"])
            peaks = client.run(peak_rss_mb)
        want = expected_scores(shape)
        block = default_block(seg, shape)

    print(f"blocks of {block} ({math.prod(shape) // math.prod(block)} tasks + merge tree of fan-in 8)")
    print(f"volume metrics: {seconds:.1f} s, {math.prod(shape) / seconds / 1e6:.1f} Mvoxel/s")
    for addr, mb in sorted(peaks.items()):
        print(f"  worker {addr}: peak RSS {mb:.0f} MB = {mb * 2**20 / limit:.2f} of its limit")
    print(f"workers lost or restarted: {len(before - after)}")
    for key in ("vi_split", "vi_merge", "adapted_rand_error", "cremi_score"):
        print(f"  {key:20s} {scores[key]:.9f}   expected {want[key]:.9f}")
    ok = all(abs(scores[k] - want[k]) <= 1e-9 for k in want if isinstance(want[k], float)) and scores["voxels"] == want["voxels"]
    print(f"equal to the in-memory table: {ok}")


if __name__ == "__main__":
    main()
