"""Benchmark: `emunet status` of an output with 10^6 blocks on local disk.

Plans a virtual volume of ``--blocks`` blocks of 1 × 32 × 32 (1024 per 1024² slice; the
input is Zarr metadata only, no voxel is written), creates the output's metadata, then marks
every block done through `pipeline.ledger.Ledger.mark_done` in ``--writers`` processes at
once (one marker per block, exactly what workers write), and times the `emunet status OUT
--json` command (a fresh Python process: the user's wall time):

1. **cold**: the first reader after the run: no roll-up yet, so it lists every group's
   markers (10^6 names) and writes one roll-up per complete group;
2. **warm**: every later reader: one listing of ``rollup/`` (100 objects) and one of
   ``failed/``;
3. **during a run**: one group's markers half removed (a run still writing it): the warm
   roll-ups plus one group's listing.

Goal (issue #14): status of a 10^6-block output in ≤ 2 s on local disk.

    python bench/bench_status.py [--blocks 1000000] [--writers 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = (1, 32, 32)


def _mark(args: tuple[str, int, int, int]) -> float:
    from pipeline.ledger import Ledger

    url, total, lo, hi = args
    ledger = Ledger(url, total)
    t0 = time.perf_counter()
    for block_id in range(lo, hi):
        ledger.mark_done(block_id)
    return time.perf_counter() - t0


def status_seconds(out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emunet.cli.app", "status", str(out), "--json"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(proc.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=1_000_000)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()

    import zarr

    from pipeline.ledger import GROUP_SIZE, Ledger
    from pipeline.output import create_output
    from pipeline.plan import make_plan
    from unetcore.config import preset

    per_slice = (1024 // BLOCK[1]) * (1024 // BLOCK[2])
    shape = (math.ceil(args.blocks / per_slice), 1024, 1024)
    print(f"{_dt.date.today()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="emunet-status-", dir=args.workdir))
    try:
        src, out = tmp / "in.zarr", tmp / "out.zarr"
        zarr.create_array(str(src), shape=shape, chunks=(1, 256, 256), dtype="uint8")  # metadata only
        plan = make_plan(str(src), str(out), shape, preset("tiny"), block_shape=BLOCK)
        create_output(plan)
        n = plan.num_blocks
        print(f"output: {n:,} blocks of {BLOCK} over {shape}; ledger groups of {GROUP_SIZE:,}")

        t0 = time.perf_counter()
        cuts = [n * i // args.writers for i in range(args.writers + 1)]
        with mp.get_context("spawn").Pool(args.writers) as pool:
            busy = pool.map(_mark, [(str(out), n, cuts[i], cuts[i + 1]) for i in range(args.writers)])
        wall = time.perf_counter() - t0
        print(f"marked {n:,} blocks done in {wall:.1f} s with {args.writers} writers "
              f"({max(busy) / (n / args.writers) * 1e3:.3f} ms per marker per writer)")

        rows = []
        cold, report = status_seconds(out)
        assert report["done"] == n == report["total"], report
        rows.append(("cold: lists every marker, writes the roll-ups", cold))
        warm, report = status_seconds(out)
        assert report["done"] == n, report
        rows.append(("warm: roll-ups only", warm))
        t0 = time.perf_counter()
        Ledger(str(out), n).summary()
        rows.append(("warm, in process (`Ledger.summary`)", time.perf_counter() - t0))
        ledger = Ledger(str(out), n)
        for block_id in range(GROUP_SIZE // 2, GROUP_SIZE):  # a run still writing group 0
            ledger.unmark_done(block_id)
        during, report = status_seconds(out)
        assert report["done"] == n - GROUP_SIZE // 2, report
        rows.append(("during a run: one group incomplete", during))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import emunet.cli.app"], cwd=ROOT, check=True)
        rows.append(("(Python + CLI import alone)", time.perf_counter() - t0))
        for name, seconds in rows:
            print(f"  emunet status {name:48s} {seconds:6.2f} s")
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"(removed the {args.blocks:,} markers in {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
