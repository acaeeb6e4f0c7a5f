"""`emunet segment --tta` on its default path, the `segment-volume` flow: the flag reaches
the blocks (their numbers are the TTA predictor's) and the output's provenance."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tests.flows.conftest import BLOCK, DEMO_MODEL

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_the_flow_runs_the_blocks_with_tta(volume, scheduler, tmp_path) -> None:
    from emunet.cli.flow_commands import segment_with_flow
    from pipeline.segment import SegmentConfig
    from unetcore.checkpoint import load_checkpoint
    from unetcore.predict import PredictConfig, TilePredictor

    config = SegmentConfig(block_shape=BLOCK, scheduler=scheduler, progress=False, dtype="float32", tta=True)
    out = tmp_path / "tta.zarr"
    assert segment_with_flow(volume[0], out, DEMO_MODEL, config) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["emunet"]["predict"]["tta"] is True
    ckpt = load_checkpoint(DEMO_MODEL)
    expected = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(device="cpu", tta=True)).predict_stack(volume[2])
    np.testing.assert_allclose(group["probability"][:], expected, atol=1e-5, rtol=0)
