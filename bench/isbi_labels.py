"""Neuron labels of a model on the ISBI 2012 validation slices, at each merge threshold.

A model is worth what its labels are worth: a map that scores a little better on the
threshold-swept pixel metrics can still give worse neurons (docs/models/isbi2012.md). This
script predicts the validation slices with a checkpoint, runs the instance stage
(`pipeline.instances.run_instances`, the code behind `emunet agglomerate`, in this process)
once per merge threshold, and scores the labels with the ISBI metrics; beside them, the
same map thresholded at its best threshold (chosen on the ground truth, so an upper bound
for plain thresholding). Prints one JSON object.

Usage (repository root):
    python bench/isbi_labels.py --model models/isbi2012.safetensors [--val 16:20] [--thresholds 0.6 0.7 0.75 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr

from pipeline.instances import InstanceConfig, run_instances
from pipeline.instances.volume_metrics import isbi_labels
from pipeline.metrics.evaluate import evaluate_stack
from unetcore.checkpoint import load_checkpoint
from unetcore.predict import PredictConfig, TilePredictor

REPO = Path(__file__).resolve().parents[1]
VOXEL_NM = (50.0, 4.0, 4.0)  # ISBI 2012: ssTEM sections, about 4 × 4 × 50 nm


def probability_store(path: Path, prob_u8: np.ndarray) -> str:
    """The layout `emunet segment` writes, as far as the instance stage reads it."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    z, y, x = prob_u8.shape
    group.create_array("probability", data=prob_u8, chunks=(1, y, x), dimension_names=("z", "y", "x"))
    for axis, n, step in zip("zyx", prob_u8.shape, VOXEL_NM, strict=True):
        group.create_array(axis, data=np.arange(n, dtype="float64") * step, dimension_names=(axis,))
    group.create_group("ledger")
    group.attrs["emunet"] = {"voxel_size_nm": list(VOXEL_NM)}
    return str(path)


def rounded(scores: dict) -> dict:
    keys = ("rand_error", "info_error", "rand_error_2012")
    return {k: round(float(scores[k]), 4) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "isbi2012.safetensors")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EMUNET_DATA", REPO.parent / "shared" / "data")) / "isbi2012")
    parser.add_argument("--val", default="16:20", help="validation slices, lo:hi")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(InstanceConfig().thresholds))
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.val.split(":"))
    images = tifffile.imread(args.data / "train-volume.tif")[lo:hi]
    gt = tifffile.imread(args.data / "train-labels.tif")[lo:hi]
    ckpt = load_checkpoint(args.model)
    prob = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(batch_size=4, device="cpu")).predict_stack(images)
    stored = np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)  # what `segment` stores by default
    result = {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "validation_slices": f"{lo}-{hi - 1}",
        "membrane_fraction_at_0.5": round(float((prob < 0.5).mean()), 4),
        "thresholded_map_best": rounded(evaluate_stack(stored, gt)),
        "labels": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.thresholds:
            url = probability_store(Path(tmp) / f"t{t}.zarr", stored)
            config = InstanceConfig(block_shape=(1, *stored.shape[1:]), thresholds=(t,), labels_threshold=t)
            run_instances(url, config)
            labels = np.asarray(zarr.open_group(url, mode="r")["neuron_ids"][...])
            result["labels"][f"{t:g}"] = rounded(isbi_labels(labels, gt))
    best = min(result["labels"].items(), key=lambda kv: kv[1]["rand_error"])
    result["best_threshold"] = float(best[0])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
