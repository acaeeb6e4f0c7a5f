"""Benchmark: `PredictConfig(compile=True)` (torch.compile, inductor) against eager PyTorch.

The same `TilePredictor.predict_stack` on the same stack, the same torch threads, one after
the other and alternating (3 rounds, median): a model's default tile on ``--slices`` real
ISBI 2012 slices (512 × 512), or random uint8 slices of that size without the data. The
eager side runs the predictor's default layout (channels-last); the compiled model is timed
in that layout and, as a second compiled side, contiguous (each side loads its own copy of
the weights, since the predictor converts its model in place). Prints seconds per slice for
each side, each compiled side's speed-up over eager, its one-off compile time (first call,
the inductor cache of this machine may make it shorter) and the largest probability
difference.

    python bench/bench_compile.py [--checkpoint models/isbi2012.safetensors] [--threads 1 2] [--slices 8]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train-volume.tif"


def stack(slices: int) -> np.ndarray:
    if DATA.is_file():
        from unetcore.io import read_array

        return read_array(str(DATA))[:slices]
    return np.random.default_rng(0).integers(0, 256, (slices, 512, 512), dtype=np.uint8)


SIDES = {"eager": (False, True), "compiled": (True, True), "compiled-contiguous": (True, False)}  # (compile, channels_last)


def compare(checkpoint: Path, images: np.ndarray, threads: int, rounds: int, batch: int) -> dict:
    import torch

    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    torch.set_num_threads(threads)
    sides, first_s = {}, {}
    for name, (compile_, channels_last) in SIDES.items():
        ckpt = load_checkpoint(checkpoint, device="cpu")
        config = PredictConfig(device="cpu", batch_size=batch, compile=compile_, channels_last=channels_last)
        sides[name] = TilePredictor(ckpt.model, ckpt.normalization, config)
        t0 = time.perf_counter()
        sides[name].predict_stack(images[:1])  # the compile (and a first slice)
        first_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t0 = time.perf_counter()
            results[name] = sides[name].predict_stack(images)
            times[name].append((time.perf_counter() - t0) / len(images))
    s_per_slice = {name: statistics.median(t) for name, t in times.items()}
    row: dict = {"threads": threads, "batch_size": batch, "slices": len(images)}
    for name, sec in s_per_slice.items():
        row[f"{name}_s_per_slice"] = round(sec, 3)
        if name != "eager":
            row[f"{name}_speedup"] = round(s_per_slice["eager"] / sec, 3)
            row[f"{name}_compile_s"] = round(first_s[name], 1)
            row[f"{name}_max_abs_diff"] = float(np.abs(results["eager"] - results[name]).max())
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "isbi2012.safetensors")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args(argv)
    import torch

    images = stack(args.slices)
    print(json.dumps({"date": _dt.date.today().isoformat(), "machine": platform.machine(), "torch": torch.__version__,
                      "checkpoint": args.checkpoint.name, "data": "ISBI 2012" if DATA.is_file() else "random"}))
    for threads in args.threads:
        row = compare(args.checkpoint, images, threads, args.rounds, args.batch_size)
        print(json.dumps(row))
        for name in list(SIDES)[1:]:
            print(f"{threads} thread(s): eager (channels-last) {row['eager_s_per_slice']} s/slice, {name} "
                  f"{row[f'{name}_s_per_slice']} s/slice: {row[f'{name}_speedup']}× (compile {row[f'{name}_compile_s']} s, "
                  f"max |Δp| {row[f'{name}_max_abs_diff']:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
