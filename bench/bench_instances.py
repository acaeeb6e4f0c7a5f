"""Benchmark: the instance stage (`pipeline.instances`) blockwise on Dask vs whole-volume.

One run prints, side by side:

1. voxels/s of the whole stage (fragments → graph → tree → labels) on N workers vs the same
   algorithm (`InstanceConfig` with one block = the volume: scikit-image watershed, the
   same graph and union-find) in one process, and their ratio;
2. peak memory (max RSS) per worker for a volume V and for 8·V on fresh clusters, ratio;
3. agglomeration: edges, edges/s of the tree stages, bytes per edge stored (graph files)
   and per tree level (the largest node file), extrapolated to a teravoxel;
4. volume metrics (contingency table over blocks, tree of fan-in 8) for V and 8·V:
   seconds and peak RSS per worker, ratio.

The volume is synthetic 3D cells (nearest-seed Voronoi, membranes 2 voxels thick, smoothed,
noise), isotropic, uint8 like `emunet segment` writes.

    python bench/bench_instances.py [--shape 32,256,256] [--workers 2]
    python bench/bench_instances.py --quality [--data ../shared/data]

``--quality`` prints the real-data report instead: ISBI 2012 slices 16–19 through the shipped
model (`models/isbi2012.safetensors`), labels vs the thresholded map (ISBI metrics); the
FIB-SEM volume through the same model, 3D labels vs 3D components of the thresholded map
(VI, adapted Rand); and the VI between the labels of two block shapes on both.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cells_and_probability(shape: tuple[int, int, int], cell: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cells uint32, probability uint8) of a Voronoi tessellation with ~``cell``-voxel cells."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=bool)
    n = max(2, int(np.prod(shape) / cell**3))
    seeds[tuple(rng.integers(0, s, n) for s in shape)] = True
    _, idx = ndimage.distance_transform_edt(~seeds, return_indices=True)
    markers = ndimage.label(seeds)[0]
    cells = markers[tuple(idx)].astype(np.uint32)
    wall = np.zeros(shape, dtype=bool)
    for axis in range(3):
        d = np.diff(cells, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(None, -1)
        wall[tuple(sl)] |= d
    wall = ndimage.binary_dilation(wall)
    p = ndimage.gaussian_filter((~wall).astype(np.float32), 0.8) + rng.normal(0, 0.05, shape).astype(np.float32)
    return cells, np.clip(np.rint(np.clip(p, 0, 1) * 255), 0, 255).astype(np.uint8)


def write_store(path: Path, prob: np.ndarray, chunks: tuple[int, int, int], voxel=(8.0, 8.0, 8.0)) -> str:
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = group.create_array("probability", shape=prob.shape, chunks=chunks, dtype="uint8", dimension_names=("z", "y", "x"))
    arr[...] = prob
    group.attrs["emunet"] = {"voxel_size_nm": [float(v) for v in voxel]}
    return str(path)


def write_labels(path: Path, labels: np.ndarray, chunks: tuple[int, int, int]) -> str:
    import zarr

    arr = zarr.create_array(str(path), shape=labels.shape, chunks=chunks, dtype=labels.dtype)
    arr[...] = labels
    return str(path)


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program (VmHWM; ru_maxrss would count the
    parent's memory at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def warm_up() -> None:
    """Import the kernels' libraries (what a long-lived worker has done long before)."""
    import cc3d  # noqa: F401
    import edt  # noqa: F401
    import fastremap  # noqa: F401
    import skimage.segmentation  # noqa: F401
    import zarr  # noqa: F401

    import pipeline.instances.driver  # noqa: F401


def on_fresh_cluster(workers: int, fn, warm=None):
    """``fn(client)`` on a new, warmed-up LocalCluster: (result, seconds of fn, peak RSS in MB
    of each worker). ``warm(client)``, if given, runs first, untimed (a long-lived cluster's
    first-call costs: Dask's array graph path, the stores' code)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.run(warm_up)
        if warm is not None:
            warm(client)
        start = time.perf_counter()
        result = fn(client)
        seconds = time.perf_counter() - start
        peaks = sorted(client.run(peak_rss_mb).values())
    return result, seconds, peaks


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def predict(images: np.ndarray) -> np.ndarray:
    import torch

    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    torch.set_num_threads(os.cpu_count() or 1)
    ckpt = load_checkpoint(ROOT / "models" / "isbi2012.safetensors")
    return TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(device="cpu")).predict_stack(images)


def labels_per_threshold(url: str, config, client) -> dict[float, np.ndarray]:
    """Run once, then relabel at every threshold (resume: only the relabel stage runs)."""
    import zarr

    from pipeline.instances import InstanceConfig, run_instances

    out = {}
    for k, t in enumerate(config.thresholds):
        cfg = InstanceConfig(**{**config.to_dict(), "thresholds": config.thresholds, "labels_threshold": t,
                                "block_shape": config.block_shape})
        run_instances(url, cfg, client=client, resume=k > 0)
        out[t] = np.asarray(zarr.open_group(url, mode="r")["neuron_ids"][...])
    return out


def quality(data: Path, workers: int) -> None:
    import cc3d
    import h5py
    import tifffile

    from pipeline.instances import InstanceConfig
    from pipeline.instances.runner import instance_client
    from pipeline.instances.volume_metrics import isbi_labels, volume_scores
    from pipeline.metrics.evaluate import evaluate_stack

    print(f"# instance quality on real data  {_dt.date.today()}  {os.cpu_count()} CPUs, {workers} workers")
    thresholds = (0.6, 0.7, 0.75, 0.8)
    with tempfile.TemporaryDirectory() as tmp, instance_client(workers, None) as client:
        root = Path(tmp)
        raw = tifffile.imread(data / "isbi2012" / "train-volume.tif")[16:20]
        gt = tifffile.imread(data / "isbi2012" / "train-labels.tif")[16:20]
        prob = np.clip(np.rint(predict(raw) * 255), 0, 255).astype(np.uint8)
        ref = evaluate_stack(prob, gt)
        print("\nISBI 2012 slices 16-19 (2D mode), lower is better")
        print(f"  thresholded map (best threshold on GT): V_rand error {ref['rand_error']:.4f}  V_info error "
              f"{ref['info_error']:.4f}  Rand 2012 {ref['rand_error_2012']:.4f}")
        shapes = {}
        for block in ((1, 256, 256), (4, 512, 512)):
            url = write_store(root / f"isbi{block[1]}.zarr", prob, (1, 256, 256), voxel=(50.0, 4.0, 4.0))
            shapes[block] = labels_per_threshold(url, InstanceConfig(block_shape=block, thresholds=thresholds), client)
        for t, lab in shapes[(1, 256, 256)].items():
            r = isbi_labels(lab, gt)
            print(f"  labels t = {t:<4}  blocks 256²: V_rand error {r['rand_error']:.4f}  V_info error "
                  f"{r['info_error']:.4f}  Rand 2012 {r['rand_error_2012']:.4f}")
        for t in thresholds:
            a, b = shapes[(1, 256, 256)][t], shapes[(4, 512, 512)][t]
            vi = volume_scores(a.astype(np.uint64), b + 1)
            print(f"  block-shape change 256² → whole slices, t = {t}: VI {vi['vi']:.4f} "
                  f"(split {vi['vi_split']:.4f}, merge {vi['vi_merge']:.4f}), ARAND {vi['adapted_rand_error']:.4f}")

        img = h5py.File(data / "gala-fibsem" / "train-image.h5", "r")["stack"][...]
        fgt = h5py.File(data / "gala-fibsem" / "train-gt.lzf.h5", "r")["stack"][...]
        fprob_f = predict(img)
        fprob = np.clip(np.rint(fprob_f * 255), 0, 255).astype(np.uint8)
        print("\nFIB-SEM gala (50x100x200, 3D mode; the model was trained on ssTEM, not FIB-SEM), GT 0 ignored")
        for t in (0.3, 0.5, 0.7):
            cc = cc3d.connected_components(fprob_f > t, connectivity=6).astype(np.uint64)
            r = volume_scores(cc, fgt)
            print(f"  3D components of p > {t}: VI split {r['vi_split']:.3f}  merge {r['vi_merge']:.3f}  ARAND {r['adapted_rand_error']:.3f}")
        fth = (0.4, 0.5, 0.6, 0.7)
        fshapes = {}
        for block in ((25, 50, 100), (50, 100, 200)):
            url = write_store(root / f"fib{block[0]}.zarr", fprob, (25, 50, 100))
            fshapes[block] = labels_per_threshold(url, InstanceConfig(mode="3d", block_shape=block, thresholds=fth), client)
        for t, lab in fshapes[(25, 50, 100)].items():
            r = volume_scores(lab, fgt)
            vi = volume_scores(lab, fshapes[(50, 100, 200)][t] + 1)
            print(f"  labels t = {t}: VI split {r['vi_split']:.3f}  merge {r['vi_merge']:.3f}  ARAND {r['adapted_rand_error']:.3f}"
                  f"   | blocks 25x50x100 vs whole: VI {vi['vi']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,256,256", help="volume V (z,y,x); 8·V doubles every axis")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quality", action="store_true", help="the real-data quality report instead")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    if args.quality:
        quality(args.data, args.workers)
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    big = tuple(2 * s for s in shape)
    chunks, block = (16, 64, 64), (32, 128, 128)

    from pipeline.instances import InstanceConfig, run_instances
    from pipeline.instances.volume_metrics import LabelSource, volume_scores

    config = InstanceConfig(mode="3d", block_shape=block, thresholds=(0.3, 0.5, 0.7), min_size=20, context=4)
    print(f"# bench_instances  {_dt.date.today()}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {args.workers} workers")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cells, prob = cells_and_probability(shape)
        cells_big, prob_big = cells_and_probability(big, seed=1)

        # 1. blockwise on workers vs whole volume in one process
        warm_up()
        whole = InstanceConfig(**{**config.to_dict(), "block_shape": None, "thresholds": config.thresholds})
        print("\n1. instance stage, blockwise on workers vs the same algorithm on the whole volume in one process")
        runs = {}
        # Both sides are warmed by one untimed run of the stage on a small volume (the whole
        # side in this process, the blockwise side on the fresh cluster), so that neither pays
        # first-call costs a long-lived process has paid long before.
        small = (min(shape[0], block[0]), min(shape[1], block[1]), min(shape[2], 2 * block[2]))  # 2 blocks: both workers
        warm_blocks = lambda c: run_instances(write_store(root / f"warm-{time.monotonic_ns()}.zarr", prob[tuple(slice(0, s) for s in small)], chunks), config, client=c)  # noqa: E731
        run_instances(write_store(root / "warm-whole.zarr", prob[tuple(slice(0, s) for s in small)], small),
                      InstanceConfig(**{**whole.to_dict(), "thresholds": config.thresholds, "block_shape": small}))
        for name, volume, data in (("V", shape, prob), ("8V", big, prob_big)):
            url = write_store(root / f"{name}.zarr", data, chunks)
            summary, t_blocks, peaks = on_fresh_cluster(args.workers, lambda c: run_instances(url, config, client=c), warm_blocks)
            one = write_store(root / f"{name}-whole.zarr", data, volume)
            t = time.perf_counter()
            run_instances(one, InstanceConfig(**{**whole.to_dict(), "thresholds": config.thresholds, "block_shape": volume}))
            t_whole = time.perf_counter() - t
            vox = float(np.prod(volume))
            runs[name] = (url, summary, peaks)
            print(f"   {name} = {volume} ({vox / 1e6:.1f} Mvoxel), {summary.num_blocks} blocks of {block}: "
                  f"blockwise {t_blocks:6.2f} s ({vox / t_blocks / 1e6:.2f} Mvoxel/s; "
                  + ", ".join(f"{k} {v:.2f}" for k, v in summary.seconds.items())
                  + f"), whole {t_whole:6.2f} s ({vox / t_whole / 1e6:.2f} Mvoxel/s): blockwise/whole speed {t_whole / t_blocks:.2f}x")
        (url, summary, peaks_v), (url_big, summary_big, peaks_big) = runs["V"], runs["8V"]

        # 2. peak memory per worker, V vs 8·V
        print(f"\n2. peak RSS per worker: V {max(peaks_v):.0f} MB, 8V = {big} {max(peaks_big):.0f} MB, "
              f"ratio {max(peaks_big) / max(peaks_v):.3f}")

        # 3. agglomeration
        edges = summary_big.edges
        tree_s = summary_big.seconds["tree"]
        graph_bytes = dir_bytes(Path(url_big) / "instances" / "graph")
        tree_root = Path(url_big) / "instances" / "tree"
        levels = sorted((tree_root / "t0").iterdir(), key=lambda p: int(p.name[1:]))

        def node_bytes(level: str) -> dict[str, int]:  # pending edges (all thresholds) + one threshold's maps
            sizes: dict[str, int] = {}
            for part in (tree_root / "e" / level, tree_root / "t0" / level):
                for f in part.iterdir():
                    sizes[f.name] = sizes.get(f.name, 0) + f.stat().st_size
            return sizes

        per_level = [(p.name, sum(node_bytes(p.name).values()), max(node_bytes(p.name).values())) for p in levels]
        print(f"\n3. agglomeration on 8V: {edges} edges, {summary_big.fragments} fragments, "
              f"{len(config.thresholds)} thresholds in one pass")
        print(f"   tree stages {tree_s:.2f} s: {edges / tree_s:,.0f} edges/s (all thresholds)")
        print(f"   graph files: {graph_bytes / edges:.1f} bytes/edge; edges/voxel {edges / np.prod(big):.4f}")
        for name, total, largest in per_level:
            print(f"   tree level {name}: {total / 1024:8.1f} KiB (pending edges + one threshold's tables), "
                  f"largest node {largest / 1024:7.1f} KiB")
        tera = 1e12 * edges / np.prod(big)
        print(f"   teravoxel extrapolation: {tera:.2e} edges, {tera * graph_bytes / edges / 1e12:.1f} TB of graph files, "
              f"tree {tera / (edges / tree_s) / 3600:.1f} core-hours")

        # 4. volume metrics, V vs 8·V
        def scores(c, seg_url, gt_url):
            return volume_scores(LabelSource(seg_url, "neuron_ids"), LabelSource(gt_url), block_shape=(32, 128, 128), client=c)

        gt_v, gt_big = write_labels(root / "gt.zarr", cells, chunks), write_labels(root / "gtb.zarr", cells_big, chunks)
        sv, tv, mpeak_v = on_fresh_cluster(args.workers, lambda c: scores(c, url, gt_v))
        sb, tb, mpeak_big = on_fresh_cluster(args.workers, lambda c: scores(c, url_big, gt_big))
        print(f"\n4. volume metrics: V {tv:.1f} s peak {max(mpeak_v):.0f} MB; 8V {tb:.1f} s peak {max(mpeak_big):.0f} MB; "
              f"ratio {max(mpeak_big) / max(mpeak_v):.3f}")
        print(f"   quality on 8V (t = {config.thresholds[config.labels_index]}): VI split {sb['vi_split']:.3f}, "
              f"merge {sb['vi_merge']:.3f}, ARAND {sb['adapted_rand_error']:.3f}")


if __name__ == "__main__":
    main()
