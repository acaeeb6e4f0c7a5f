"""`emunet segment --pyramid N --mask` stops the pyramid at a sensible size and writes the
mask as an OME-Zarr label image that ome-zarr-py reads; `status --verify --repair` then
`segment --resume` recomputes a done block whose chunk was deleted (the real command)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.pyramid import useful_levels
from pipeline.volume import multiscales_of
from tests.conftest import save_tiny_checkpoint

SHAPE = (2, 96, 72)


@pytest.mark.parametrize(
    ("shape_yx", "chunk_yx", "asked", "expected"),
    [
        ((40, 56), (16, 16), 2, 2),  # 20×28, 10×14: the second fits one chunk, so it is the last
        ((40, 56), (16, 16), 20, 2),
        ((3, 5), (8, 8), 20, 1),  # level 1 is written whenever the base is larger than 1×1
        ((1, 1), (1, 1), 20, 0),
        ((10_000, 8_000), (512, 512), 20, 5),  # 5000, 2500, 1250, 625, 313 (≤ 512)
        ((10_000, 8_000), (512, 512), 3, 3),
    ],
)
def test_useful_levels(shape_yx, chunk_yx, asked: int, expected: int) -> None:
    assert useful_levels(shape_yx, chunk_yx, asked) == expected


def test_pyramid_labels_and_verify_repair_resume_through_the_command(
    app, runner, tmp_path: Path, monkeypatch, caplog
) -> None:
    from unetcore.synthetic import synthetic_em_volume

    monkeypatch.setenv("EMUNET_SEGMENT_TORCH_THREADS", "1")
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.safetensors", seed=1)
    volume = tmp_path / "in.zarr"
    zarr.create_array(str(volume), shape=SHAPE, chunks=(1, 48, 48), dtype="uint8")[:] = synthetic_em_volume(SHAPE, seed=2).image
    out = tmp_path / "out.zarr"
    base = ["segment", str(volume), str(out), "--model", str(checkpoint), "--block", "2", "24", "24", "--workers", "1", "--no-flow"]
    with caplog.at_level(logging.WARNING, logger="pipeline.pyramid"):
        result = runner.invoke(app, [*base, "--pyramid", "20", "--mask"])
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(out), mode="r")
    (multiscale,) = [m for m in multiscales_of(group.attrs.asdict()) if m["name"] == "probability"]
    shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
    assert shapes == [(2, 96, 72), (2, 48, 36), (2, 24, 18)]  # 24×18 fits one 24×24 chunk: last level
    assert "pyramid" in group and sorted(group["pyramid/probability"].keys()) == ["1", "2"]
    top = multiscale["datasets"][-1]["coordinateTransformations"][0]["scale"]
    assert top[1:] == pytest.approx([4.0, 4.0])  # 1 nm voxels × 4, not × 2**20
    assert "wrote 2 of the 20 levels" in caplog.text
    assert "; pyramid " in result.output  # its time on the workers, after the blocks' line

    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(out)))())  # what napari-ome-zarr shows: image + label layer
    assert nodes[0].metadata["name"] == "probability" and [d.shape for d in nodes[0].data] == shapes
    (label,) = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    np.testing.assert_array_equal(np.asarray(label.data[0]), group["mask"][...])
    assert 0 < int(group["mask"][...].sum()) < group["mask"].size  # a real mask, not all one value

    chunk = out / "probability" / "c" / "0" / "1" / "2"  # block (0, 1, 2) of the 1×4×3 grid
    good = chunk.read_bytes()
    chunk.unlink()
    found = runner.invoke(app, ["status", str(out), "--verify", "--repair"])
    assert found.exit_code == 0, found.output
    assert "block 5: missing probability/c/0/1/2" in found.output and "11/12 blocks done" in found.output
    resumed = runner.invoke(app, [*base, "--mask", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["computed"] == 1  # only the block whose chunk was lost
    assert chunk.read_bytes() == good
    final = runner.invoke(app, ["status", str(out), "--verify"])
    assert final.exit_code == 0 and "12/12 blocks done" in final.output and "0 failed" in final.output
    assert "pyramid: 2 level(s) above the full resolution, (y, x) 48×36, 24×18" in final.output
