"""Benchmark: the fast border weight map vs the naive per-cell loop, on real ISBI labels.

Both run on the same slices in one process; prints per-slice times, the speed-up ratio and
the maximum absolute deviation. The data folder is $EMUNET_DATA or ../shared/data relative
to the repository root.

    python bench/bench_weightmap.py [--slices 4] [--repeat 3] [--fibsem]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unetcore.weightmap import (  # noqa: E402
    WeightMapConfig,
    border_weight_map,
    cells_from_labels,
    naive_border_weight_map,
)


def data_dir() -> Path:
    return Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data"))


def best_time(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare(name: str, labels: np.ndarray, repeat: int, **kwargs) -> tuple[float, float, float]:
    config = WeightMapConfig()
    t_naive, naive = best_time(lambda: naive_border_weight_map(labels, config, **kwargs), 1)
    t_fast, fast = best_time(lambda: border_weight_map(labels, config, **kwargs), repeat)
    deviation = float(np.abs(fast.astype(np.float64) - naive).max())
    n_cells = cells_from_labels(labels, kwargs.get("instances", False))[1]
    print(
        f"{name:<28} {n_cells:>6} {t_naive:>10.3f} {t_fast:>10.4f} "
        f"{t_naive / t_fast:>9.1f}x {deviation:>10.5f}"
    )
    return t_naive, t_fast, deviation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4, help="ISBI slices to compare")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the fast map")
    parser.add_argument("--fibsem", action="store_true", help="also a 3D FIB-SEM crop")
    args = parser.parse_args()

    import tifffile

    path = data_dir() / "isbi2012" / "train-labels.tif"
    if not path.is_file():
        raise SystemExit(f"expected the ISBI labels at {path}; set EMUNET_DATA")
    stack = tifffile.imread(path)
    import scipy

    print("# border weight map, w0=10 sigma=5 cutoff=0.01 (naive: no cutoff)")
    print(f"# {platform.machine()}, {os.cpu_count()} CPU cores visible; "
          f"numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"{'input':<28} {'cells':>6} {'naive s':>10} {'fast s':>10} {'speed-up':>10} "
          f"{'max |dev|':>10}")
    naive_total = fast_total = worst = 0.0
    step = max(1, stack.shape[0] // args.slices)
    for z in range(0, stack.shape[0], step)[: args.slices]:
        t_naive, t_fast, deviation = compare(f"isbi slice {z} (512x512)", stack[z], args.repeat)
        naive_total, fast_total = naive_total + t_naive, fast_total + t_fast
        worst = max(worst, deviation)
    print(f"{'isbi total':<28} {'':>6} {naive_total:>10.3f} {fast_total:>10.4f} "
          f"{naive_total / fast_total:>9.1f}x {worst:>10.5f}")

    if args.fibsem:
        import h5py

        with h5py.File(data_dir() / "gala-fibsem" / "train-gt.lzf.h5", "r") as f:
            volume = f["stack"][:20]
        compare("fibsem 3D 20x100x200", volume, args.repeat, instances=True)


if __name__ == "__main__":
    main()
