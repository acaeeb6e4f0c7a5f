"""`pipeline.prepare`: what the client reads before any worker starts.

The checkpoint is read once on the client (its header, weights and file hash come from one
read), and a flow's validation reads it once more at most (header and hash in one pass).
Opens are counted with an audit hook (`sys.addaudithook`: the interpreter's own "open"
event), not a patched `open`.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.prepare import prepare
from pipeline.segment import SegmentConfig
from tests.conftest import save_tiny_checkpoint
from tests.pipeline.conftest import write_ome

_WATCHED: dict[str, list[str]] = {}


def _hook(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, Path)):
        name = str(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace"))
        for target, seen in _WATCHED.items():
            if Path(name).name == Path(target).name:
                seen.append(name)


sys.addaudithook(_hook)  # audit hooks cannot be removed; this one only looks at watched names


def opens_of(path: Path):
    class Count:
        def __enter__(self) -> list[str]:
            _WATCHED[str(path)] = []
            return _WATCHED[str(path)]

        def __exit__(self, *exc) -> None:
            _WATCHED.pop(str(path), None)

    return Count()


@pytest.fixture()
def inputs(tmp_path) -> tuple[Path, Path]:
    ckpt = save_tiny_checkpoint(tmp_path / "model-once.safetensors", seed=3)
    vol = np.random.default_rng(0).integers(0, 255, (2, 40, 36), dtype=np.uint8)
    write_ome(tmp_path / "in.zarr", [vol], (30.0, 4.0, 4.0))
    return ckpt, tmp_path / "in.zarr"


def test_the_client_reads_the_checkpoint_once(inputs, tmp_path) -> None:
    ckpt, src = inputs
    with opens_of(ckpt) as seen:
        ready = prepare(src, tmp_path / "out.zarr", ckpt, SegmentConfig(workers=1))
    assert len(seen) == 1, seen
    assert ready.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()  # from that one read
    assert ready.model_config.base_channels == 4


def test_header_and_hash_come_from_one_pass(inputs) -> None:
    from unetcore.checkpoint import file_sha256, inspect_checkpoint, read_header

    ckpt, _ = inputs
    with opens_of(ckpt) as seen:
        header, sha = inspect_checkpoint(ckpt)
    assert len(seen) == 1
    assert header == read_header(ckpt) and sha == file_sha256(ckpt)


def test_an_edited_checkpoint_is_refused_before_the_output_is_looked_at(inputs, tmp_path) -> None:
    from unetcore.checkpoint import CheckpointError

    ckpt, src = inputs
    data = bytearray(ckpt.read_bytes())
    data[-5] ^= 0xFF  # a weight changed, the header kept: the content hash no longer matches
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        prepare(src, tmp_path / "out.zarr", edited, SegmentConfig(workers=1))
    assert not (tmp_path / "out.zarr").exists()


# -- the default geometry -------------------------------------------------------------------
@pytest.fixture()
def wide(tmp_path) -> tuple[Path, Path]:
    ckpt = save_tiny_checkpoint(tmp_path / "model.safetensors", seed=3)
    image = zarr.create_array(str(tmp_path / "wide.zarr"), shape=(2, 600, 1400), chunks=(1, 300, 350), dtype="uint8")
    image[...] = np.random.default_rng(0).integers(0, 255, image.shape, dtype=np.uint8)
    return ckpt, tmp_path / "wide.zarr"


def test_one_tile_covers_a_default_blocks_plane(wide, tmp_path) -> None:
    from unetcore.memory import pass_batch
    from unetcore.predict import PredictConfig, plan_tiles

    ckpt, src = wide
    ready = prepare(src, tmp_path / "out.zarr", ckpt, SegmentConfig(workers=1, device="cpu"))
    assert (ready.plan.block_shape, ready.plan.chunk_shape) == ((2, 1024, 1024), (2, 512, 512))
    tiles = plan_tiles(ready.model_config, ready.plan.block_shape[1:], None, PredictConfig(max_out_tile=ready.max_out_tile))
    assert tiles.in_tile == ready.tile and tiles.counts == (1, 1)  # what the workers' predictor chooses
    assert plan_tiles(ready.model_config, ready.plan.block_shape[1:], None, PredictConfig()).counts == (2, 2)  # without the cap
    assert ready.batch == pass_batch("cpu", ready.tile, 4) == 1  # one large tile per pass on a CPU
    chosen = prepare(src, tmp_path / "out.zarr", ckpt, SegmentConfig(workers=1, tile_shape=(220, 220)))
    assert chosen.tile == (220, 220) and chosen.max_out_tile is None and chosen.batch == 4  # a chosen tile is the user's
    big = prepare(src, tmp_path / "out.zarr", ckpt, SegmentConfig(workers=1, block_shape=(2, 2048, 2048)))
    assert plan_tiles(big.model_config, (2048, 2048), None, PredictConfig(max_out_tile=big.max_out_tile)).counts == (2, 2)
