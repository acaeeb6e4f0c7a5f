"""Figures for the ISBI 2012 model card: metrics on the validation slices, speed, pictures.

Usage (repository root):
    python bench/isbi_report.py --model models/isbi2012.safetensors [--data ../shared/data/isbi2012]

Predicts the validation slices (16-19) with and without test-time augmentation, computes
every ISBI 2012 metric, times inference per 512×512 slice, and writes
`docs/models/isbi2012-validation.png` and `docs/models/isbi2012-test.png` (a slice of the
challenge submission made by `emunet predict`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from emunet.cli.demo import write_overlay
from pipeline.metrics.evaluate import evaluate_stack
from unetcore.checkpoint import load_checkpoint
from unetcore.predict import PredictConfig, TilePredictor

REPO = Path(__file__).resolve().parents[1]


def scores(prob: np.ndarray, gt: np.ndarray) -> dict:
    result = evaluate_stack(prob, gt)
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "isbi2012.safetensors")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EMUNET_DATA", REPO.parent / "shared" / "data")) / "isbi2012")
    parser.add_argument("--submission", type=Path, default=None, help="a prediction of test-volume.tif to picture")
    parser.add_argument("--val", default="16:20")
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.val.split(":"))
    images = tifffile.imread(args.data / "train-volume.tif")[lo:hi]
    labels = tifffile.imread(args.data / "train-labels.tif")[lo:hi]
    ckpt = load_checkpoint(args.model)
    predictor = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(batch_size=4, device="cpu"))
    predictor.predict(images[0][:200, :200])  # warm-up
    t0 = time.perf_counter()
    prob = predictor.predict_stack(images)
    per_slice = (time.perf_counter() - t0) / len(images)
    tta = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(batch_size=4, device="cpu", tta=True))
    prob_tta = tta.predict_stack(images)
    result = {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "validation_slices": f"{lo}-{hi - 1}",
        "seconds_per_slice_cpu": round(per_slice, 2),
        "torch_threads": torch.get_num_threads(),
        "plain": scores(prob, labels),
        "tta": scores(prob_tta, labels),
        "training": {k: ckpt.metadata.get(k) for k in ("step", "total_steps", "validation")},
    }
    out = REPO / "docs" / "models"
    write_overlay(out / "isbi2012-validation.png", images[0], prob[0], labels[0])
    if args.submission is not None:
        test = tifffile.imread(args.data / "test-volume.tif")
        sub = tifffile.imread(args.submission)
        if sub.dtype != np.float32 or sub.shape != test.shape or sub.min() < 0 or sub.max() > 1:
            raise SystemExit(f"expected a float32 {test.shape} submission in [0, 1], got {sub.dtype} {sub.shape}")
        write_overlay(out / "isbi2012-test.png", test[0], sub[0], None)
        result["submission"] = {"shape": list(sub.shape), "dtype": str(sub.dtype), "min": float(sub.min()), "max": float(sub.max())}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
