"""The scale run: 10^3 … 10^5 real blocks through `emunet segment`, the pipeline's own cost.

A model so small (2D U-Net, depth 1, 2 base channels: a few ms per 1×64×64 block on one
thread) that what is measured is the pipeline: planning, submission, scheduling, reading,
writing, ledger markers, progress. Everything runs as users run it, in separate processes:

* a ``dask scheduler`` and 2 ``dask worker`` processes (1 thread each, ``--resources GPU=1``),
  without Dask's sampling profiler, as the recipes in deploy/ start them (``--worker-profile``
  keeps Dask's default, on);
* ``emunet segment IN OUT --model … --block 1 64 64 --scheduler tcp://… --json`` (the
  default Prefect flow) as a subprocess: its peak RSS (``VmHWM``) and CPU time are sampled
  from /proc while it runs; the scheduler's CPU time and peak RSS likewise;
* a fresh cluster per size, a real Zarr store on local disk.

Per size it prints one JSON line: wall time, blocks/s, the pipeline's overhead per block per
worker = (run wall × workers ÷ blocks) − the bare model's time per block (the same block,
``predict_block`` in this process on 1 torch thread), client and scheduler CPU per block,
client and scheduler peak memory, the workers' stage times per block, ``emunet status``
time. Then the largest size again, SIGKILLed part way and resumed with ``--resume``: the
resumed output must equal the uninterrupted one chunk for chunk, and ``emunet status`` must
agree. A summary table and an extrapolation to 10^6 blocks and 100 workers end the output.

    .venv/bin/python bench/bench_scale.py                         # 10^3, 10^4, 10^5, kill+resume at 10^5
    .venv/bin/python bench/bench_scale.py --sizes 1000 10000 --resume-size 10000
    .venv/bin/python bench/bench_scale.py --sizes 1000 --blocks-per-task 32 --no-flow

Sizes are rounded up to whole 1024×1024 planes (256 blocks of 64×64 each).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster_procs import BIN, Cluster, Sampler  # noqa: E402  (bench/ is the script's folder)


# -- setup ----------------------------------------------------------------------------------
def make_checkpoint(workdir: Path, depth: int, base_channels: int) -> Path:
    import torch

    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import UNetConfig
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    torch.manual_seed(0)
    config = UNetConfig(depth=depth, base_channels=base_channels)
    return save_checkpoint(workdir / f"unet-d{depth}-c{base_channels}.safetensors", UNet(config), Normalization())


def make_volume(path: Path, planes: int, plane: np.ndarray, chunk_yx: int) -> Path:
    """`planes` copies of one synthetic EM plane (z chunks of 1): cheap to write at 10^5 blocks."""
    import zarr

    if not path.exists():
        side = plane.shape[-1]
        array = zarr.create_array(str(path), shape=(planes, side, side), chunks=(1, chunk_yx, chunk_yx), dtype="uint8")
        for z in range(0, planes, 16):
            n = min(16, planes - z)
            array[z : z + n] = np.broadcast_to(plane, (n, side, side))
    return path


def segment_cmd(args: argparse.Namespace, src: Path, out: Path, address: str, *extra: str) -> list[str]:
    cmd = [str(BIN / "emunet"), "segment", str(src), str(out), "--model", str(args.checkpoint), "--block",
           *map(str, args.block), "--scheduler", address, "--json", "--dtype", args.dtype]  # fmt: skip
    if args.blocks_per_task:
        cmd += ["--blocks-per-task", str(args.blocks_per_task)]
    if args.pyramid:
        cmd += ["--pyramid", str(args.pyramid)]
    if not args.flow:
        cmd += ["--no-flow"]
    return cmd + list(extra)


def run_client(cmd: list[str], log: Path, kill_after_s: float | None = None) -> dict[str, Any]:
    """Run the segment command; wall, exit code, peak RSS and CPU of the client process."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        sampler = Sampler(proc.pid)
        sampler.start()
        if kill_after_s is not None:
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    result = parse_json(stdout)
    return {"wall_s": round(wall, 3), "rc": proc.returncode, "client_peak_rss_mb": round(sampler.peak / 2**20, 1),
            "client_ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1), "client_cpu_s": round(sampler.cpu, 3),
            "result": result}  # fmt: skip


def status(out: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    p = subprocess.run([str(BIN / "emunet"), "status", str(out), "--json"], capture_output=True, cwd=ROOT)
    return round(time.perf_counter() - t0, 3), parse_json(p.stdout) or {}


def parse_json(stdout: bytes) -> dict[str, Any] | None:
    """The JSON object a command printed (from its first "{"), or None."""
    text = stdout.decode(errors="replace")
    try:
        return json.loads(text[text.index("{") :])
    except ValueError:
        return None


# -- references -----------------------------------------------------------------------------
def bare_model(args: argparse.Namespace, out: Path, src: Path, repeats: int = 300) -> dict[str, float]:
    """The bare model on one block of the run's plan: predict_block on 1 torch thread, ms."""
    import torch

    from pipeline.blocks import predict_block, read_block
    from pipeline.output import load_plan
    from pipeline.volume import open_volume
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    torch.set_num_threads(1)
    plan = load_plan(str(out))
    tile = json.loads((out / "zarr.json").read_text())["attributes"].get("emunet", {}).get("predict", {}).get("tile")
    ckpt = load_checkpoint(args.checkpoint, device="cpu")
    predictor = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(tile_shape=tuple(tile) if tile else None, device="cpu"))
    block = plan.num_blocks // 2 + 7
    data = read_block(plan, block, open_volume(str(src)))
    for _ in range(20):
        predict_block(data, plan, block, predictor)
    t0 = time.perf_counter()
    for _ in range(repeats):
        predict_block(data, plan, block, predictor)
    model_ms = (time.perf_counter() - t0) / repeats * 1e3
    return {"bare_model_ms_per_block": round(model_ms, 3), "tile": tile}


def ledger_marks(out: Path, n: int = 2000) -> float:
    """ms per `Ledger.mark_done` on this disk (a scratch ledger)."""
    from pipeline.ledger import Ledger

    ledger = Ledger(str(out.parent / "scratch-ledger"), n)
    ledger.reset()
    t0 = time.perf_counter()
    for i in range(n):
        ledger.mark_done(i)
    ms = (time.perf_counter() - t0) / n * 1e3
    ledger.reset()
    return round(ms, 3)


def chunk_digest(out: Path) -> tuple[int, str]:
    """(chunks, SHA-256 over every chunk file's relative path and bytes) of `probability`."""
    h, n = hashlib.sha256(), 0
    root = out / "probability"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name != "zarr.json":
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
                n += 1
    return n, h.hexdigest()


# -- one size -------------------------------------------------------------------------------
def per_block(result: dict[str, Any], blocks: int) -> dict[str, float]:
    """The workers' busy time per stage, ms per block (summed over workers)."""
    return {k: round(v / blocks * 1e3, 3) for k, v in (result or {}).get("stage_seconds", {}).items()}


def run_paths(args: argparse.Namespace, blocks: int, plane: np.ndarray) -> tuple[Path, Path]:
    """(input, uninterrupted output) of a size: whole planes of 64×64 blocks."""
    per_plane = (plane.shape[-1] // args.block[1]) * (plane.shape[-1] // args.block[2])
    planes = math.ceil(blocks / per_plane)
    src = make_volume(args.workdir / f"in-{planes}.zarr", planes, plane, args.input_chunk)
    return src, args.workdir / f"out-{planes}.zarr"


def run_size(args: argparse.Namespace, blocks: int, plane: np.ndarray) -> dict[str, Any]:
    src, out = run_paths(args, blocks, plane)
    planes = int(src.name[3:-5])
    cluster = Cluster(args.workdir, args.workers, args.worker_profile)
    try:
        _, _, idle0 = cluster.scheduler_stats()
        time.sleep(args.idle_s)  # the scheduler's own CPU while nothing runs (ticks, heartbeats)
        (s_hwm0, _, s_cpu0), w_cpu0 = cluster.scheduler_stats(), cluster.worker_cpu()
        idle_rate = (s_cpu0 - idle0) / args.idle_s
        run = run_client(segment_cmd(args, src, out, cluster.address, "--overwrite"), args.workdir / f"segment-{planes}.log")
        (s_hwm, s_rss, s_cpu), w_cpu = cluster.scheduler_stats(), cluster.worker_cpu()
    finally:
        cluster.close()
    r = run.pop("result") or {}
    n = r.get("total_blocks", 0)
    status_s, st = status(out)
    if args.bare is None:
        args.bare = bare_model(args, out, src)
    bare_ms = args.bare["bare_model_ms_per_block"]
    run_s = r.get("run_seconds") or float("nan")
    return {
        "blocks": n, **run, "ok": r.get("ok"), "computed": r.get("computed"),
        "segment_seconds": round(r.get("seconds", 0.0), 3), "run_seconds": round(run_s, 3),
        "blocks_per_s": round(n / run_s, 1), "blocks_per_task": r.get("blocks_per_task"), "peak_in_flight": r.get("peak_in_flight"),
        "overhead_ms_per_block_per_worker": round(run_s * args.workers / n * 1e3 - bare_ms, 3),
        "overhead_ms_per_block_per_worker_whole_command": round(run["wall_s"] * args.workers / n * 1e3 - bare_ms, 3),
        "worker_cpu_ms_per_block": round((w_cpu - w_cpu0) / n * 1e3, 3),  # all workers' CPU, incl. the pyramid
        "worker_cpu_overhead_ms_per_block": round((w_cpu - w_cpu0) / n * 1e3 - bare_ms, 3),
        "client_cpu_ms_per_block": round(run["client_cpu_s"] / n * 1e3, 3),
        "scheduler_cpu_ms_per_block": round((s_cpu - s_cpu0) / n * 1e3, 3),
        "scheduler_idle_cpu_per_s": round(idle_rate, 4), "scheduler_cpu_s": round(s_cpu - s_cpu0, 3),
        "scheduler_peak_rss_mb": round(s_hwm / 2**20, 1), "scheduler_rss_at_start_mb": round(s_hwm0 / 2**20, 1),
        "scheduler_rss_end_mb": round(s_rss / 2**20, 1),
        "worker_stage_ms_per_block": per_block(r, n),
        "worker_peak_rss_mb": sorted(round(v / 2**20, 1) for v in r.get("worker_peak_rss", {}).values()),
        "pyramid_seconds": r.get("pyramid_seconds"), "status_seconds": status_s,
        "status_done": st.get("done"), "status_failed": len(st.get("failed", [])),
    }  # fmt: skip


def kill_and_resume(args: argparse.Namespace, blocks: int, plain: dict[str, Any], plane: np.ndarray) -> dict[str, Any]:
    """The same run SIGKILLed at `--kill-at` of its uninterrupted wall, then `--resume`d."""
    src, ref = run_paths(args, blocks, plane)
    out = ref.with_name(ref.name.replace(".zarr", "-killed.zarr"))
    cluster = Cluster(args.workdir, args.workers, args.worker_profile)
    try:
        kill_s = args.kill_after or plain["wall_s"] * args.kill_at
        killed = run_client(segment_cmd(args, src, out, cluster.address, "--overwrite"), args.workdir / "killed.log", kill_s)
        _, before = status(out)
        resumed = run_client(segment_cmd(args, src, out, cluster.address, "--resume"), args.workdir / "resumed.log")
    finally:
        cluster.close()
    r = resumed.pop("result") or {}
    status_s, st = status(out)
    same = chunk_digest(out) == chunk_digest(ref)
    return {
        "blocks": plain["blocks"], "killed_after_s": round(kill_s, 1), "killed_rc": killed["rc"],
        "done_when_killed": before.get("done"), "resume_rc": resumed["rc"], "resume_wall_s": resumed["wall_s"],
        "resume_skipped": r.get("skipped"), "resume_computed": r.get("computed"),
        "resume_failed": len(r.get("failed", []) or []), "status_done": st.get("done"), "status_total": st.get("total"),
        "status_failed": len(st.get("failed", [])), "status_seconds": status_s,
        "counts_agree": st.get("done") == st.get("total") == (r.get("skipped") or 0) + (r.get("computed") or 0) == plain["blocks"],
        "skipped_at_least_done_when_killed": (r.get("skipped") or 0) >= (before.get("done") or 0),
        "chunks_equal_uninterrupted": same,
    }  # fmt: skip


# -- extrapolation --------------------------------------------------------------------------
def marginal(rows: list[dict[str, Any]], key: str) -> float:
    """d(key)/d(blocks) between the smallest and the largest run (start-up costs cancel), ms."""
    a, b = rows[0], rows[-1]
    if b["blocks"] == a["blocks"]:
        return b[key] / b["blocks"] * 1e3
    return (b[key] - a[key]) / (b["blocks"] - a["blocks"]) * 1e3


def extrapolate(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """10^6 default 8×512×512 blocks on 100 GPU workers: seconds each shared part needs at the
    measured marginal per-task costs (client, scheduler) against the workers' at `--gpu-block-ms`
    per block, in groups of `--blocks-per-task` or `auto_blocks_per_task` of the default block."""
    from pipeline.plan import DEFAULT_BLOCK_2D
    from pipeline.segment_config import SegmentConfig

    big = rows[-1]
    n, workers, measured_bpt = 10**6, 100, big["blocks_per_task"] or 1
    bpt = SegmentConfig(blocks_per_task=args.blocks_per_task).group_size(DEFAULT_BLOCK_2D)
    gpu_ms = args.gpu_block_ms
    client_task_ms = marginal(rows, "client_cpu_s") * measured_bpt
    sched_task_ms = marginal(rows, "scheduler_cpu_s") * measured_bpt
    tasks = -(-n // bpt)
    limits = {
        "workers (GPU time)": n * gpu_ms / workers / 1e3,
        "scheduler (one core)": tasks * sched_task_ms / 1e3,
        "client (one core)": tasks * client_task_ms / 1e3,
    }
    return {
        "blocks": n, "workers": workers, "gpu_block_ms": gpu_ms, "blocks_per_task": bpt, "tasks": tasks,
        "measured_blocks_per_task": measured_bpt,
        "client_ms_per_task": round(client_task_ms, 3), "scheduler_ms_per_task": round(sched_task_ms, 3),
        "tasks_per_s_needed": round(workers * 1e3 / (gpu_ms * bpt), 1),
        "scheduler_tasks_per_s_max": round(1e3 / max(sched_task_ms, 1e-9)),
        "client_tasks_per_s_max": round(1e3 / max(client_task_ms, 1e-9)),
        "seconds": {k: round(v, 1) for k, v in limits.items()}, "first_bottleneck": max(limits, key=limits.get),
        "status_s_measured": {r["blocks"]: r["status_seconds"] for r in rows},  # roll-ups: ~flat in blocks
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="blocks per run (rounded up to planes)")
    p.add_argument("--resume-size", type=int, default=None, help="kill+resume at this size (default: the largest; 0: skip)")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the uninterrupted wall at which to SIGKILL")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-profile", action="store_true",
                   help="workers with Dask's sampling profiler on (Dask's default; deploy/ turns it off)")
    p.add_argument("--block", type=int, nargs=3, default=[1, 64, 64])
    p.add_argument("--plane", type=int, default=1024, help="y = x size of the volume")
    p.add_argument("--input-chunk", type=int, default=256, help="input chunk (y, x)")
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=2)
    p.add_argument("--dtype", default="uint8")
    p.add_argument("--blocks-per-task", type=int, default=None, help="default: the CLI's")
    p.add_argument("--pyramid", type=int, default=2)
    p.add_argument("--flow", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--gpu-block-ms", type=float, default=32.0,
                   help="GPU ms per block for the extrapolation (default: the paper model's bare 66.4 Mvox/s on an H200, "
                        "docs/benchmarks.md, at the default 8×512×512 block)")
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds the scheduler idles before a run (its idle CPU)")
    p.add_argument("--kill-after", type=float, default=None, help="SIGKILL after this many seconds (default: --kill-at)")
    p.add_argument("--resume-only", action="store_true", help="skip the plain runs: kill+resume --resume-size against "
                   "the uninterrupted output a previous run left in --workdir (needs --kill-after)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emunet-scale-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.checkpoint = make_checkpoint(args.workdir, args.depth, args.base_channels)
    args.bare = None
    from unetcore.synthetic import synthetic_em_volume

    plane = synthetic_em_volume((1, args.plane, args.plane), seed=0).image
    print(json.dumps({"date": datetime.date.today().isoformat(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "machine": platform.machine(), "workdir": str(args.workdir), "block": args.block,
                      "model": {"depth": args.depth, "base_channels": args.base_channels},
                      "worker_profiler": args.worker_profile}), flush=True)  # fmt: skip
    rows = []
    if args.resume_only:
        src, out = run_paths(args, args.resume_size, plane)
        args.bare = bare_model(args, out, src)
        plain = {"blocks": json.loads((out / "zarr.json").read_text())["attributes"]["emunet"]["plan"]["num_blocks"]}
        print(json.dumps({"bare": args.bare, "kill_resume": kill_and_resume(args, args.resume_size, plain, plane)}))
        return 0
    for size in args.sizes:
        row = run_size(args, size, plane)
        rows.append(row)
        print(json.dumps({"size": size, **row}), flush=True)
    print(json.dumps({"bare": args.bare, "ledger_mark_done_ms": ledger_marks(args.workdir / "x")}), flush=True)
    resume_size = args.resume_size if args.resume_size is not None else max(args.sizes)
    kr = None
    if resume_size:
        plain = next(r for s, r in zip(args.sizes, rows) if s == resume_size)
        kr = kill_and_resume(args, resume_size, plain, plane)
        print(json.dumps({"kill_resume": kr}), flush=True)
    print()
    head = f"{'blocks':>8} {'wall s':>8} {'run s':>8} {'blocks/s':>9} {'ovh ms/b/w':>10} {'client MB':>9} {'sched MB':>9} {'cl ms/b':>8} {'sch ms/b':>8} {'status s':>8} {'pyr s':>6}"
    print(head)
    for r in rows:
        print(f"{r['blocks']:>8} {r['wall_s']:>8.1f} {r['run_seconds']:>8.1f} {r['blocks_per_s']:>9.1f} "
              f"{r['overhead_ms_per_block_per_worker']:>10.2f} {r['client_peak_rss_mb']:>9.1f} {r['scheduler_peak_rss_mb']:>9.1f} "
              f"{r['client_cpu_ms_per_block']:>8.3f} {r['scheduler_cpu_ms_per_block']:>8.3f} {r['status_seconds']:>8.2f} "
              f"{(r['pyramid_seconds'] or 0):>6.1f}")  # fmt: skip
    print(f"bare model: {args.bare['bare_model_ms_per_block']} ms/block (1 thread); client memory growth "
          f"{rows[-1]['client_peak_rss_mb'] - rows[0]['client_peak_rss_mb']:.1f} MB from {rows[0]['blocks']} to {rows[-1]['blocks']} blocks")
    if kr:
        print(f"kill+resume at {kr['blocks']}: killed after {kr['killed_after_s']} s with {kr['done_when_killed']} done; "
              f"resume {kr['resume_wall_s']} s; counts agree {kr['counts_agree']}; output equal {kr['chunks_equal_uninterrupted']}")
    print("extrapolation:", json.dumps(extrapolate(args, rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
