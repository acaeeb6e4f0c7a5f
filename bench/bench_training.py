"""Benchmark: training throughput of `unetcore.trainer.Trainer`, side by side in one run.

Same model (preset, random init, fixed seed), same data (ISBI 2012 training slices with
their border weight maps, or synthetic EM when the data is absent), same tile and torch
threads; only the tile sampling changes:

* ``num_workers=0``: the loop samples and augments each batch itself (elastic deformation,
  bicubic), then runs the step;
* ``num_workers=N``: N threads sample the next batches while the model runs.

For each it prints steps/s and the fraction of the wall time the model was busy, i.e. not
waiting for its next batch (``1 − data_wait_s / seconds``; `Trainer.fit` accounts the
wait). The loop syncs with the host only when it logs (every `log_every` steps), and on CUDA
the tiles come from pinned memory, so the copies are asynchronous.

    python bench/bench_training.py [--preset cpu] [--tile 252] [--steps 30] [--workers 0,1]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def training_data(data_dir: Path, slices: int):
    from unetcore.trainer import TrainData
    from unetcore.weightmap import border_weight_map

    path = data_dir / "isbi2012"
    if (path / "train-volume.tif").is_file():
        import tifffile

        images = tifffile.imread(path / "train-volume.tif")[:slices]
        labels = tifffile.imread(path / "train-labels.tif")[:slices] > 0
        source = f"ISBI 2012 training slices 0–{slices - 1}"
    else:
        from unetcore.synthetic import synthetic_em_2d

        ems = [synthetic_em_2d((512, 512), seed=s) for s in range(slices)]
        images, labels = np.stack([e.image for e in ems]), np.stack([e.labels > 0 for e in ems])
        source = f"{slices} synthetic 512 × 512 images (no ISBI data found)"
    cells = [lab.astype(np.int64) for lab in labels]
    weights = [border_weight_map(lab) for lab in cells]
    return TrainData(list(images), cells, weights), source


def run(args: argparse.Namespace, data, workers: int) -> dict[str, float]:
    import torch

    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    config = TrainConfig(steps=args.steps, tile=args.tile, val_every=0, checkpoint_every=args.steps, log_every=10,
                         device=args.device, num_workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(UNet(preset(args.preset)), data, config, tmp, progress=False)
        result = trainer.fit()
    return {"workers": workers, "steps_per_s": result["steps"] / result["seconds"], "seconds": result["seconds"],
            "busy": 1.0 - result["data_wait_s"] / result["seconds"], "data_wait_s": result["data_wait_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--tile", type=int, default=252)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", default="0,1", help="comma-separated num_workers values to compare")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (both sides)")
    p.add_argument("--device", default="auto")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("EMUNET_DATA", ROOT.parent / "shared" / "data")))
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data, source = training_data(args.data, args.slices)
    print(f"{_dt.date.today()} {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{args.threads} threads; preset {args.preset}, tile {args.tile}, batch 1, {args.steps} steps; {source}")
    rows = [run(args, data, int(w)) for w in args.workers.split(",")]
    base = rows[0]["steps_per_s"]
    for r in rows:
        print(f"  num_workers={r['workers']}: {r['steps_per_s']:.3f} steps/s ({r['seconds']:.1f} s), model busy "
              f"{r['busy']:.1%} (waited {r['data_wait_s']:.1f} s for tiles); speed ÷ num_workers={rows[0]['workers']}: "
              f"{r['steps_per_s'] / base:.2f}×")


if __name__ == "__main__":
    main()
