"""Real data: ISBI 2012 slices through the shipped model, then instances on a LocalCluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.instances import InstanceConfig, run_instances
from pipeline.instances.volume_metrics import isbi_labels as label_scores
from pipeline.metrics.evaluate import evaluate_stack

from .conftest import write_probability_store

MODEL = Path(__file__).resolve().parents[3] / "models" / "isbi2012.safetensors"


@pytest.mark.realdata
def test_isbi_labels_score_better_than_thresholding_the_same_map(isbi_images, isbi_labels, tmp_path, client,
                                                                 single_thread_torch) -> None:
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    raw, gt = isbi_images[16:18], isbi_labels[16:18]  # validation slices
    ckpt = load_checkpoint(MODEL)
    prob = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(device="cpu")).predict_stack(raw)
    stored = np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)
    url = write_probability_store(tmp_path / "isbi.zarr", stored, (1, 256, 256), voxel_size=(50.0, 4.0, 4.0))
    summary = run_instances(url, InstanceConfig(block_shape=(1, 256, 256)), client=client)
    assert summary.mode == "2d" and summary.num_blocks == 8
    labels = np.asarray(zarr.open_group(url, mode="r")["neuron_ids"][...])
    ours = label_scores(labels, gt)
    thresholded = evaluate_stack(stored, gt)  # the best threshold of the same map, chosen on GT
    assert ours["rand_error"] < thresholded["rand_error"]
    assert ours["info_error"] < thresholded["info_error"]
    assert ours["rand_error_2012"] < thresholded["rand_error_2012"]
