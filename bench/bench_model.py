"""Model CPU throughput: output megapixels per second, the FLOP rate reached, and what the
channels-last memory format gives, side by side.

In one run on the same machine, with the heap settings a Dask worker runs with
(`pipeline.worker.keep_large_buffers`): the paper's network and the narrow `cpu` preset (the
shipped model's width) at the paper's tile (572 → 388), and the `cpu` preset at the tile a
default block uses (1244 → 1060), batch 1, float32 inference. Each row times the contiguous
(NCHW) layout and channels-last (NHWC, what `TilePredictor` uses) alternately, round by
round, and prints the ratio; no assertions.

Usage: python bench/bench_model.py [--repeats 3] [--threads N] [--rows paper:572,cpu:572,cpu:1244]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch

from unetcore import geometry
from unetcore.config import preset
from unetcore.flops import forward_flops
from unetcore.model import UNet


def _seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def measure(name: str, tile: int, repeats: int) -> dict:
    """Best seconds per tile in each layout, the two timed alternately."""
    torch.manual_seed(0)
    config = preset(name)
    plain = UNet(config).eval()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, tile, tile)
    x_fast = x.contiguous(memory_format=torch.channels_last)
    out = geometry.output_shape(config, (tile, tile))
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    with torch.inference_mode():
        plain(x), fast(x_fast)  # warm-up
        for _ in range(repeats):
            times["contiguous"].append(_seconds(plain, x))
            times["channels_last"].append(_seconds(fast, x_fast))
    flops = forward_flops(plain, (tile, tile))
    row = {"model": name, "tile": f"{tile}->{out[0]}", "gflop_per_tile": round(flops / 1e9, 2),
           "flop_per_output_px": round(flops / (out[0] * out[1]))}  # fmt: skip
    for layout, seconds in times.items():
        best = min(seconds)
        row[layout] = {"seconds_per_tile": round(best, 3), "output_mpx_per_s": round(out[0] * out[1] / best / 1e6, 4),
                       "gflop_per_s": round(flops / best / 1e9, 2)}  # fmt: skip
    row["channels_last_speedup"] = round(min(times["contiguous"]) / min(times["channels_last"]), 3)
    row["speedup_per_round"] = [round(a / b, 3) for a, b in zip(times["contiguous"], times["channels_last"])]
    return row


def main() -> None:
    from pipeline.worker import keep_large_buffers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default="paper:572,cpu:572,cpu:1244", help="model:tile pairs, comma-separated")
    args = parser.parse_args()
    keep_large_buffers()  # a worker's heap settings: without them large tiles run up to 1.5× slower
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = []
    for spec in args.rows.split(","):
        name, tile = spec.split(":")
        rows.append(measure(name, int(tile), args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    by = {(r["model"], r["tile"].split("->")[0]): r for r in rows}
    if ("paper", "572") in by and ("cpu", "572") in by:
        ratio = by["cpu", "572"]["channels_last"]["output_mpx_per_s"] / by["paper", "572"]["channels_last"]["output_mpx_per_s"]
        print(f"cpu preset / paper, output Mpx/s at 572 (channels-last): {ratio:.1f}x")


if __name__ == "__main__":
    main()
