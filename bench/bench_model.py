"""Model CPU throughput: output megapixels per second and the FLOP rate reached.

Side by side in one run on the same machine: the paper's network and the narrow `cpu`
preset, at the paper's tile (572 → 388) with batch 1, in float32 inference. Prints a
table; no assertions. Usage: python bench/bench_model.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from unetcore import geometry
from unetcore.config import preset
from unetcore.flops import forward_flops
from unetcore.model import UNet


def measure(name: str, tile: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = preset(name)
    model = UNet(config).eval()
    x = torch.randn(1, 1, tile, tile)
    out = geometry.output_shape(config, (tile, tile))
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    best = min(times)
    flops = forward_flops(model, (tile, tile))
    return {
        "model": name,
        "tile": f"{tile}->{out[0]}",
        "seconds_per_tile": round(best, 3),
        "output_mpx_per_s": round(out[0] * out[1] / best / 1e6, 4),
        "gflop_per_tile": round(flops / 1e9, 2),
        "gflop_per_s": round(flops / best / 1e9, 2),
        "flop_per_output_px": round(flops / (out[0] * out[1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = [measure("paper", 572, args.repeats), measure("cpu", 572, args.repeats), measure("cpu", 428, args.repeats)]
    for row in rows:
        print(json.dumps(row))
    print(f"cpu preset / paper, output Mpx/s at 572: {rows[1]['output_mpx_per_s'] / rows[0]['output_mpx_per_s']:.1f}x")


if __name__ == "__main__":
    main()
