"""One prepared GPU run: the paper-size U-Net on ISBI 2012, and the bare model's throughput.

1. Train `preset("paper")` (base 64, 31 M parameters) with the same recipe as the shipped
   CPU model (weighted loss, elastic deformation, SGD momentum 0.99, batch 1, tile 572) for a
   fixed time budget, bf16 autocast, tiles sampled by worker threads.
2. Predict the validation slices, compute the ISBI 2012 metrics, time the inference.
3. Bare-model throughput: output Mvox/s of the paper model with bf16 autocast, channels-last
   and cudnn autotuning at several batch sizes, and the ratio to the FLOP-bound limit.

Prints one JSON object and writes it (and a PNG, the metrics log) to $OUT when set.
Usage: python bench/gpu_isbi.py --data DIR [--seconds 270] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def throughput(batches: list[int], tile: int, peak_tflops: float, repeats: int) -> list[dict]:
    from unetcore import geometry
    from unetcore.config import preset
    from unetcore.flops import forward_flops
    from unetcore.model import UNet

    config = preset("paper")
    model = UNet(config).eval()
    flops = forward_flops(model, (tile, tile))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    out = geometry.output_shape(config, (tile, tile))
    rows = []
    for batch in batches:
        x = torch.randn(batch, 1, tile, tile, device=device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(3):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - t0) / repeats
        voxels = batch * out[0] * out[1]
        rate = batch * flops / seconds
        rows.append({
            "batch": batch, "tile": tile, "seconds": round(seconds, 5),
            "mvox_per_s": round(voxels / seconds / 1e6, 2),
            "tflop_per_s": round(rate / 1e12, 1),
            "fraction_of_peak": round(rate / (peak_tflops * 1e12), 3),
            "flop_bound_mvox_per_s": round(peak_tflops * 1e12 / (flops / (out[0] * out[1])) / 1e6, 1),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train-volume.tif, train-labels.tif")
    parser.add_argument("--seconds", type=float, default=270.0, help="training budget (--smoke: at most 20)")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--preset", default="paper", help="model preset (paper, cpu, …)")
    parser.add_argument("--tile", type=int, default=572, help="legal input tile")
    parser.add_argument("--tag", default="gpu_isbi", help="name of the output files")
    parser.add_argument("--run-dir", type=Path, help="the training run's folder (default: runs/TAG)")
    parser.add_argument("--steps", type=int, default=100_000, help="step cap (the time budget usually ends first)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=500, help="validate (ISBI metrics) every N steps; best by V_rand")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="validate and keep the weights' moving average (0: the raw weights); docs/models/isbi2012.md")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny run on the CPU to check the script")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    out_dir = Path(os.environ.get("OUT", "runs/gpu"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__}

    import tifffile

    from emunet.cli.demo import write_overlay
    from pipeline.metrics.evaluate import evaluate_stack
    from unetcore.augment import AugmentConfig
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.predict import PredictConfig, TilePredictor
    from unetcore.trainer import TrainConfig, TrainData, Trainer
    from unetcore.weightmap import WeightMapConfig, border_weight_map

    images = tifffile.imread(args.data / "train-volume.tif")
    labels = tifffile.imread(args.data / "train-labels.tif")
    train_idx, val_idx = list(range(16)), [16] if args.smoke else list(range(16, 20))
    wcfg = WeightMapConfig()
    train = TrainData([images[i] for i in train_idx], [(labels[i] > 0).astype(np.int64) for i in train_idx],
                      [border_weight_map(labels[i], wcfg) for i in train_idx])
    val = TrainData([images[i] for i in val_idx], [(labels[i] > 0).astype(np.int64) for i in val_idx])
    config = preset("tiny") if args.smoke else preset(args.preset)
    tile = 188 if args.smoke else args.tile
    seconds = min(args.seconds, 20.0) if args.smoke else args.seconds
    tcfg = TrainConfig(steps=args.steps, tile=tile, lr=args.lr, warmup_steps=args.warmup if not args.smoke else 5,
                       val_every=5 if args.smoke else args.val_every, checkpoint_every=10**9, log_every=50, seed=0,
                       num_workers=args.workers, max_seconds=seconds, select_metric="rand_error", augment=AugmentConfig(),
                       ema_decay=args.ema_decay or None)
    torch.manual_seed(0)
    model = UNet(config)
    run_dir = args.run_dir or Path("runs") / args.tag
    from flows.unet_training import isbi_metric_fn

    # Validated with the swept ISBI metrics during training; best.safetensors = lowest V_rand error.
    trainer = Trainer(model, train, tcfg, run_dir, val=val, metric_fn=isbi_metric_fn, progress=False,
                      metadata={"recipe": "paper", "data": "ISBI 2012 slices 0-15"})
    t0 = time.perf_counter()
    fit = trainer.fit()
    result["train"] = {"preset": "tiny" if args.smoke else args.preset, "steps": fit["steps"],
                       "seconds": round(time.perf_counter() - t0, 1), "seconds_per_step": round(fit["seconds_per_step"], 4),
                       "tile": tile, "lr": args.lr, "seed": 0, "workers": args.workers}
    from unetcore.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "best.safetensors", device="cuda" if torch.cuda.is_available() else "cpu")
    result["train"]["best_step"] = best.metadata.get("step")
    result["train"]["ema_decay"] = tcfg.ema_decay  # best.safetensors holds the weights' moving average when set
    (out_dir / f"{args.tag}_best.safetensors").write_bytes((run_dir / "best.safetensors").read_bytes())
    trainer.model.load_state_dict(best.model.state_dict())
    trainer.model.eval()
    predictor = TilePredictor(trainer.model, trainer.normalization, PredictConfig(batch_size=4))
    predictor.predict_many([val.images[0]])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    probs = predictor.predict_many(list(val.images))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    result["seconds_per_slice"] = round((time.perf_counter() - t1) / len(val.images), 4)
    scores = evaluate_stack(np.stack(probs), np.stack([labels[i] for i in val_idx]))
    result["validation"] = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    tta = TilePredictor(trainer.model, trainer.normalization, PredictConfig(batch_size=8, tta=True))
    tta_scores = evaluate_stack(np.stack(tta.predict_many(list(val.images))), np.stack([labels[i] for i in val_idx]))
    result["validation_tta"] = {k: v for k, v in tta_scores.items() if isinstance(v, (int, float))}
    write_overlay(out_dir / f"{args.tag}_val.png", val.images[0], probs[0], labels[val_idx[0]])
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result["loss_curve"] = [(e["step"], round(e["loss_ema"], 4)) for e in log if "loss_ema" in e and e["step"] % 500 == 0]
    if not args.no_throughput:
        result["throughput"] = throughput([1, 4] if args.smoke else [1, 4, 8, 16], 188 if args.smoke else 572,
                                          args.peak_tflops, 2 if args.smoke else 10)
    text = json.dumps(result, indent=1)
    print(text)
    (out_dir / f"{args.tag}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
