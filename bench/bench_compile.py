"""Benchmark: `PredictConfig(compile=True)` (torch.compile, inductor) against eager PyTorch.

The same `TilePredictor.predict_stack` on the same stack, the same torch threads, one after
the other and alternating (3 rounds, median): a model's default tile on ``--slices`` real
ISBI 2012 slices (512 × 512), or random uint8 slices of that size without the data. Prints
seconds per slice for each side, their ratio, the one-off compile time (first call, the
inductor cache of this machine may make it shorter) and the largest probability difference.

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


def compare(checkpoint: Path, images: np.ndarray, threads: int, rounds: int, batch: int) -> dict:
    import torch

    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint, device="cpu")
    sides = {name: TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(device="cpu", batch_size=batch, compile=flag))
             for name, flag in (("eager", False), ("compiled", True))}  # fmt: skip
    t0 = time.perf_counter()
    sides["compiled"].predict_stack(images[:1])  # the compile (and a first slice)
    compile_s = time.perf_counter() - t0
    sides["eager"].predict_stack(images[:1])
    times: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for r in range(rounds):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            t0 = time.perf_counter()
            results[name] = sides[name].predict_stack(images)
            times[name].append((time.perf_counter() - t0) / len(images))
    eager, compiled = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"threads": threads, "batch_size": batch, "slices": len(images), "eager_s_per_slice": round(eager, 3),
            "compiled_s_per_slice": round(compiled, 3), "speedup": round(eager / compiled, 3),
            "compile_s": round(compile_s, 1),
            "max_abs_diff": float(np.abs(results["eager"] - results["compiled"]).max())}  # fmt: skip


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
        print(f"{threads} thread(s): eager {row['eager_s_per_slice']} s/slice, compiled {row['compiled_s_per_slice']} "
              f"s/slice: {row['speedup']}× (compile {row['compile_s']} s, max |Δp| {row['max_abs_diff']:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
