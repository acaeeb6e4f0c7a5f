"""Checkpoints round-trip, verify their hash, and are never unpickled."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from unetcore.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_header, save_checkpoint
from unetcore.config import preset
from unetcore.model import UNet
from unetcore.normalization import Normalization


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = UNet(preset("tiny").replace(base_channels=4))
    path = save_checkpoint(tmp_path / "m.safetensors", model, Normalization(0.4, 0.2), {"note": "test"})
    return model, path


def test_round_trip(saved) -> None:
    model, path = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == model.config
    assert ckpt.normalization == Normalization(0.4, 0.2)
    assert ckpt.metadata == {"note": "test"}
    x = torch.randn(1, 1, 100, 92)
    model.eval()
    assert torch.equal(model(x), ckpt.model(x))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["file_sha256"] == file_sha256(path)
    assert sidecar["content_sha256"] == ckpt.content_hash


def test_half_precision_shipping(tmp_path, saved) -> None:
    model, _ = saved
    path = save_checkpoint(tmp_path / "h.safetensors", model, Normalization(), half=True)
    ckpt = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    x = torch.randn(1, 1, 92, 92)
    assert torch.allclose(model.eval()(x), ckpt.model(x), atol=1e-2)


def test_pickle_refused_without_unpickling(tmp_path) -> None:
    path = tmp_path / "evil.safetensors"

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path)
    torch_file = tmp_path / "t.safetensors"
    torch.save({"w": torch.zeros(2)}, torch_file)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(torch_file)


def test_a_header_length_whose_first_byte_looks_like_a_pickle_loads(tmp_path, saved) -> None:
    """The 8-byte header length is little-endian: 1 checkpoint in 256 starts with 0x80, the
    first byte of a pickle. It is a safetensors file all the same (seen: a freshly trained
    best.safetensors refused as a pickle)."""
    from unetcore.checkpoint import inspect_checkpoint, read_header

    model, _ = saved
    for pad in range(0, 2048, 8):  # safetensors pads its header to 8 bytes: 0x80 is reachable
        path = save_checkpoint(tmp_path / "p.safetensors", model, Normalization(), {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with 0x80 as its first byte")
    assert load_checkpoint(path).config == model.config
    assert read_header(path)["model_config"] == inspect_checkpoint(path)[0]["model_config"]


def test_truncated_and_modified_files(tmp_path, saved) -> None:
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(cut)
    flipped = tmp_path / "flip.safetensors"
    flipped.write_bytes(data[:-8] + bytes(8))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(flipped)
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "missing.safetensors")


def test_config_that_does_not_match_weights(tmp_path) -> None:
    from safetensors.torch import save_file

    model = UNet(preset("tiny").replace(base_channels=4))
    path = save_checkpoint(tmp_path / "a.safetensors", model, Normalization())
    header = read_header(path)
    header["model_config"]["base_channels"] = 8
    from unetcore.checkpoint import content_hash

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    header["content_sha256"] = content_hash(tensors, header["model_config"], header["normalization"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"emunet": json.dumps(header)})
    with pytest.raises(CheckpointError, match="expected weights matching the checkpoint's model config"):
        load_checkpoint(bad)


def test_plain_safetensors_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="expected an emunet checkpoint"):
        load_checkpoint(path)


def _edit_header(src, dst, edit) -> None:
    """Copy `src` to `dst` with its emunet header edited and its tensors (and hash) kept."""
    from safetensors.torch import load_file, save_file

    header = read_header(src)
    edit(header)
    save_file(load_file(str(src)), str(dst), metadata={"emunet": json.dumps(header)})


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["normalization"].update(mean=h["normalization"]["mean"] + 0.3),
        lambda h: h["normalization"].update(std=h["normalization"]["std"] * 2),
        lambda h: h["model_config"].update(base_channels=2 * h["model_config"]["base_channels"]),
    ],
    ids=["mean", "std", "config"],
)
def test_an_edited_header_is_refused(tmp_path, edit) -> None:
    """The content hash covers the normalisation and model config too: an edited mean/std
    (which would shift every probability) is refused like edited weights."""
    path = save_checkpoint(tmp_path / "a.safetensors", UNet(preset("tiny")), Normalization(mean=0.5, std=0.2))
    _edit_header(path, tmp_path / "b.safetensors", edit)
    with pytest.raises(CheckpointError, match="an edited header counts"):
        load_checkpoint(tmp_path / "b.safetensors")
    _edit_header(path, tmp_path / "c.safetensors", lambda h: h["metadata"].update(note="a comment"))
    load_checkpoint(tmp_path / "c.safetensors")  # training metadata does not change the numbers


def test_a_format_1_checkpoint_loads_with_a_warning(tmp_path) -> None:
    """Format 1 hashed the tensors only: it still loads (its tensors verified) but warns."""
    from safetensors.torch import load_file

    from unetcore.checkpoint import FORMAT_V1, tensor_hash

    path = save_checkpoint(tmp_path / "a.safetensors", UNet(preset("tiny")), Normalization())
    tensors = load_file(str(path))

    def v1(h):
        h["format"], h["content_sha256"] = FORMAT_V1, tensor_hash(tensors)

    _edit_header(path, tmp_path / "v1.safetensors", v1)
    with pytest.warns(UserWarning, match="does not cover its normalisation"):
        load_checkpoint(tmp_path / "v1.safetensors")


def test_the_committed_models_are_format_2() -> None:
    import warnings
    from pathlib import Path

    from unetcore.checkpoint import FORMAT

    for name in ("isbi2012", "demo-synthetic"):
        path = Path(__file__).resolve().parents[2] / "models" / f"{name}.safetensors"
        assert read_header(path)["format"] == FORMAT
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_checkpoint(path)
