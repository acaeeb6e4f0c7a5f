"""Benchmark: a block's output chunks written by zarr-python vs `pipeline.chunkwrite`.

Side by side in one process, on the same data and disk, alternating the two sides:

1. **one chunk at a time, one thread**: ``array[chunk] = data`` (zarr's event loop and
   thread pool) vs `ChunkWriter.write` (the array's own codecs, in the calling thread), for a
   small chunk (1 × 64 × 64, the scale run's) and the default block's (8 × 512 × 512); the
   stored bytes are checked equal;
2. **the worker's block path**: `pipeline.execute.run_group` (reader, model and writer
   threads) over ``--blocks`` blocks of 1 × 64 × 64 with a depth-1 U-Net, the output written
   through `pipeline.output.Output.write` with the chunk writer vs with zarr's path
   (the writer switched off for that side).

Prints ms per chunk / per block for each side and the ratio (zarr ÷ chunk writer).

    python bench/bench_chunkwrite.py [--blocks 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def per_chunk(workdir: Path, shape: tuple[int, int, int], chunk: tuple[int, int, int], repeats: int) -> dict:
    import zarr

    from pipeline.chunkwrite import ChunkWriter
    from pipeline.geometry import Roi

    rng = np.random.default_rng(0)
    data = (rng.random(chunk) * 255).astype(np.uint8)
    grid = [s // c for s, c in zip(shape, chunk)]
    cells = [tuple(i * c for i, c in zip(index, chunk)) for index in np.ndindex(*grid)]
    times: dict[str, list[float]] = {"zarr": [], "chunk_writer": []}
    for r in range(repeats):
        arrays = {}
        for side in ("zarr", "chunk_writer") if r % 2 == 0 else ("chunk_writer", "zarr"):
            array = zarr.create_array(str(workdir / f"{side}-{r}.zarr"), shape=shape, chunks=chunk, dtype="uint8",
                                      config={"write_empty_chunks": True})
            writer = ChunkWriter.for_array(array)
            t0 = time.perf_counter()
            for lo in cells:
                if side == "zarr":
                    array[tuple(slice(low, low + c) for low, c in zip(lo, chunk))] = data
                else:
                    writer.write(Roi(lo, chunk), data)
            times[side].append((time.perf_counter() - t0) / len(cells) * 1e3)
            arrays[side] = workdir / f"{side}-{r}.zarr"
        a, b = (sorted(p.relative_to(arrays[s]) for p in arrays[s].rglob("c/**/*") if p.is_file()) for s in arrays)
        assert a == b and all((arrays["zarr"] / p).read_bytes() == (arrays["chunk_writer"] / p).read_bytes() for p in a)
    zarr_ms, fast_ms = statistics.median(times["zarr"]), statistics.median(times["chunk_writer"])
    return {"chunk": list(chunk), "chunks": len(cells), "zarr_ms_per_chunk": round(zarr_ms, 3),
            "chunk_writer_ms_per_chunk": round(fast_ms, 3), "ratio": round(zarr_ms / fast_ms, 2), "bytes_equal": True}


def block_path(workdir: Path, blocks: int, repeats: int) -> dict:
    import torch

    from bench_scale import make_checkpoint, make_volume
    from pipeline.blocks import block_ops, make_predictor, open_input, predict_block
    from pipeline.chunkwrite import ZarrWriter
    from pipeline.execute import run_group
    from pipeline.ledger import Ledger
    from pipeline.output import OutputOptions, create_output
    from pipeline.plan import make_plan
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig

    torch.set_num_threads(1)
    planes = -(-blocks // 256)
    plane = (np.random.default_rng(1).random((1024, 1024)) * 255).astype(np.uint8)
    src = make_volume(workdir / "in.zarr", planes, plane, 256)
    ckpt = load_checkpoint(make_checkpoint(workdir, 1, 2))
    predictor = make_predictor(ckpt, PredictConfig(device="cpu"))
    times: dict[str, list[float]] = {"zarr": [], "chunk_writer": []}
    for r in range(repeats):
        for side in ("zarr", "chunk_writer") if r % 2 else ("chunk_writer", "zarr"):
            plan = make_plan(str(src), str(workdir / f"out-{side}-{r}.zarr"), (planes, 1024, 1024), ckpt.model.config,
                             block_shape=(1, 64, 64))
            output = create_output(plan, OutputOptions(), model_config=ckpt.model.config.to_dict())
            if side == "zarr":
                output._writers[output.options.name] = ZarrWriter(output.array(output.options.name))  # zarr's own path
            ops = block_ops(plan, open_input(plan), output, Ledger(plan.output_url, plan.num_blocks),
                            lambda b, d, plan=plan: predict_block(d, plan, b, predictor))
            ids = list(range(plan.num_blocks))
            t0 = time.perf_counter()
            report = run_group(ids, ops)
            times[side].append((time.perf_counter() - t0) / len(ids) * 1e3)
            assert len(report.done) == len(ids), report.failed[:1]
    zarr_ms, fast_ms = statistics.median(times["zarr"]), statistics.median(times["chunk_writer"])
    return {"blocks": planes * 256, "block": [1, 64, 64], "zarr_ms_per_block": round(zarr_ms, 3),
            "chunk_writer_ms_per_block": round(fast_ms, 3), "ratio": round(zarr_ms / fast_ms, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=1024, help="blocks of the block-path run (rounded up to planes of 256)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps({"date": _dt.date.today().isoformat(), "python": platform.python_version(),
                      "machine": platform.machine()}))
    with tempfile.TemporaryDirectory(prefix="emunet-chunkwrite-") as tmp:
        work = Path(tmp)
        small = per_chunk(work / "small", (2, 1024, 1024), (1, 64, 64), args.repeats)
        print(json.dumps({"one_chunk_at_a_time": small}))
        large = per_chunk(work / "large", (16, 1024, 1024), (8, 512, 512), args.repeats)
        print(json.dumps({"one_chunk_at_a_time": large}))
        path = block_path(work / "blocks", args.blocks, args.repeats)
        print(json.dumps({"worker_block_path": path}))
    print(f"\nper chunk {small['chunk']}: zarr {small['zarr_ms_per_chunk']} ms, chunk writer "
          f"{small['chunk_writer_ms_per_chunk']} ms: {small['ratio']}×")
    print(f"per chunk {large['chunk']}: zarr {large['zarr_ms_per_chunk']} ms, chunk writer "
          f"{large['chunk_writer_ms_per_chunk']} ms: {large['ratio']}×")
    print(f"block path ({path['blocks']} blocks of 1×64×64, run_group): zarr {path['zarr_ms_per_block']} ms/block, "
          f"chunk writer {path['chunk_writer_ms_per_block']} ms/block: {path['ratio']}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
