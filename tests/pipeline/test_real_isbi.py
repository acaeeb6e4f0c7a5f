"""The whole pipeline on real data: the ISBI 2012 test volume, imported and segmented on Dask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import xarray as xr

from pipeline.importer import import_volume
from pipeline.segment import SegmentConfig, segment
from unetcore.checkpoint import load_checkpoint
from unetcore.predict import PredictConfig, TilePredictor

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo-synthetic.safetensors"


def test_segment_the_real_isbi_test_volume(isbi_dir: Path, tmp_path: Path) -> None:
    source = isbi_dir / "test-volume.tif"
    volume = tmp_path / "test-volume.zarr"
    import_volume(source, volume, voxel_size=(50, 4, 4), chunks=(5, 256, 256))
    out = tmp_path / "seg.zarr"
    config = SegmentConfig(block_shape=(5, 256, 256), dtype="float32", workers=2, progress=False, torch_threads=1)
    result = segment(volume, out, DEMO_MODEL, config)
    assert not result.failed and result.computed == 2 * 2 * 6

    # Analysts' view: dims (z, y, x) with physical coordinates in nm.
    ds = xr.open_zarr(out, consolidated=False)
    prob = ds["probability"]
    assert prob.dims == ("z", "y", "x") and prob.shape == (30, 512, 512)
    assert float(prob["y"][1] - prob["y"][0]) == 4.0 and float(prob["z"][1] - prob["z"][0]) == 50.0

    # Blocked on Dask = the whole-slice prediction of the same model, on real slices.
    raw = tifffile.imread(source)
    ckpt = load_checkpoint(DEMO_MODEL)
    whole = TilePredictor(ckpt.model, ckpt.normalization, PredictConfig(max_out_tile=1024)).predict_stack(raw[[0, 17]])
    np.testing.assert_allclose(prob.values[[0, 17]], whole, atol=1e-5)
