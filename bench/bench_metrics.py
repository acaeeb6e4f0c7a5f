"""Benchmark: all five ISBI 2012 leaderboard metrics on a 30-slice 512×512 stack.

The stack is the real ISBI 2012 training labels (20 slices) followed by their first 10
slices again (30 slices). The proposal is a smoothed noisy version of the labels, scaled
to [0, 1] (float32, like a network output). The bound to beat is 60 s on 2 CPU cores
(the Java reference takes 10-20 min).

    python bench/bench_metrics.py [--workers N] [--data DIR]

Prints the warm-up (numba cache load / compilation) and the timed run in seconds, and
the ratio to the 60 s bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOUND_S = 60.0


def build_stack(data_dir: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(proposal float32 in [0, 1], GT uint8) of shape (30, 512, 512)."""
    import tifffile
    from scipy import ndimage as ndi

    labels = tifffile.imread(data_dir / "isbi2012" / "train-labels.tif")
    gt = np.concatenate([labels, labels[:10]])  # 20 + 10 repeated slices
    rng = np.random.default_rng(seed)
    noisy = gt.astype(np.float32) / 255.0 + rng.normal(0.0, 0.35, gt.shape).astype(np.float32)
    smooth = np.stack([ndi.gaussian_filter(s, 2.0) for s in noisy])
    lo, hi = float(smooth.min()), float(smooth.max())
    return ((smooth - lo) / (hi - lo)).astype(np.float32), gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="threads over slices (default: CPU count)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data")))
    args = parser.parse_args()

    from pipeline.metrics.evaluate import evaluate_stack

    pred, gt = build_stack(args.data)
    t0 = time.perf_counter()
    evaluate_stack(pred[:1, :64, :64], gt[:1, :64, :64], workers=1)  # load / compile the kernels
    warmup = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluate_stack(pred, gt, workers=args.workers)
    elapsed = time.perf_counter() - t0

    workers = args.workers or os.cpu_count()
    print(f"stack: {gt.shape[0]} slices of {gt.shape[1]}x{gt.shape[2]}, CPU cores: {os.cpu_count()}, workers: {workers}")
    for key in ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error", "warping_error_jain"):
        print(f"  {key:20s} {result[key]:.6g}")
    print(f"warm-up (numba load/compile): {warmup:.2f} s")
    print(f"all five metrics: {elapsed:.2f} s = {elapsed / BOUND_S:.3f} x the {BOUND_S:.0f} s bound")


if __name__ == "__main__":
    main()
