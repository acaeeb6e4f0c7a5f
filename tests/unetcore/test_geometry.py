"""The size rule, halo, receptive field and memory estimate, as tables with odd sizes."""

from __future__ import annotations

import pytest
import torch

from unetcore import geometry
from unetcore.config import UNetConfig, preset
from unetcore.model import UNet

PAPER = preset("paper")


@pytest.mark.parametrize(
    ("config", "tile", "expected"),
    [
        (PAPER, (572, 572), (388, 388)),
        (PAPER, (188, 188), (4, 4)),
        (PAPER, (572, 188), (388, 4)),
        (preset("paper-transposed"), (572, 572), (388, 388)),
        (preset("tiny"), (92, 92), (4, 4)),
        (preset("tiny"), (100, 116), (12, 28)),
        (UNetConfig(depth=1, base_channels=2), (18, 22), (2, 6)),
        (UNetConfig(depth=2, base_channels=2, padding="same"), (12, 20), (12, 20)),
        (preset("aniso3d"), (60, 188, 204), (4, 4, 20)),
    ],
)
def test_output_shape_table(config: UNetConfig, tile, expected) -> None:
    assert geometry.output_shape(config, tile) == expected


@pytest.mark.parametrize(("config", "tile"), [(PAPER, (70, 70)), (preset("tiny"), (100, 116)), (preset("aniso3d"), (60, 188, 188))])
def test_model_output_matches_geometry(config: UNetConfig, tile) -> None:
    model = UNet(config.replace(base_channels=2)).eval()
    if not geometry.is_legal(config, tile):
        with pytest.raises(geometry.IllegalTileSizeError):
            model(torch.zeros((1, 1) + tile))
        return
    with torch.no_grad():
        out = model(torch.zeros((1, 1) + tile))
    assert tuple(out.shape) == (1, config.num_classes) + geometry.output_shape(config, tile)


def test_paper_facts() -> None:
    assert geometry.halo(PAPER) == (92, 92)
    assert geometry.bottleneck_receptive_field(PAPER) == (140, 140)
    assert geometry.receptive_field(PAPER) == (185, 185)
    assert geometry.phase_lattice(PAPER) == (16, 16)
    assert geometry.legal_input_sizes(PAPER, up_to=620)[-4:] == [572, 588, 604, 620]
    assert all((s - 12) % 16 == 0 for s in geometry.legal_input_sizes(PAPER, up_to=1000))
    assert geometry.smallest_input_shape(PAPER) == (188, 188)


def test_illegal_size_names_nearest_legal() -> None:
    with pytest.raises(geometry.IllegalTileSizeError, match="nearest legal sizes: 556 or 572"):
        geometry.output_shape(PAPER, 570)
    assert geometry.nearest_legal(PAPER, 570) == (556, 572)
    assert geometry.nearest_legal(PAPER, 100) == (None, 188)
    assert not geometry.is_legal(PAPER, (571, 572))


def test_bottleneck_is_28_for_572() -> None:
    shapes = {layer.name: layer for layer in geometry.layer_shapes(PAPER, 572)}
    assert shapes["bottleneck.relu2"].shape == (28, 28)
    assert shapes["bottleneck.relu2"].channels == 1024
    assert shapes["down0.relu2"].shape == (568, 568)
    assert shapes["head"].shape == (388, 388)


def test_input_shape_for_output() -> None:
    assert geometry.input_shape_for_output(PAPER, 388) == (572, 572)
    assert geometry.input_shape_for_output(PAPER, 389) == (588, 588)
    assert geometry.input_shape_for_output(PAPER, 1) == (188, 188)


def test_high_margin() -> None:
    assert geometry.high_margin(PAPER) == (15, 15)
    assert geometry.high_margin(preset("paper-transposed")) == (0, 0)
    assert geometry.high_margin(preset("aniso3d")) == (3, 15, 15)


def test_activation_estimate_counts_every_training_activation() -> None:
    """Training estimate = the numel of every module output, measured with forward hooks."""
    config = preset("tiny").replace(dropout=0.0)
    model = UNet(config).train()
    seen: list[int] = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, i, o: seen.append(o.numel()))
    tile = (116, 132)
    model(torch.zeros((1, 1) + tile))
    layers = geometry.layer_shapes(config, tile)
    convs_and_pools = [l for l in layers if not l.name.endswith(("relu1", "relu2", ".concat", ".upsample"))]
    assert sorted(seen) == sorted(l.numel for l in convs_and_pools)
    assert geometry.activation_bytes(config, tile, training=True) == 4 * sum(l.numel for l in layers)


def test_memory_grows_and_largest_tile_fits() -> None:
    small = geometry.activation_bytes(PAPER, 188)
    big = geometry.activation_bytes(PAPER, 572)
    assert big > 5 * small
    budget = 2 * 1024**3
    tile = geometry.largest_tile(PAPER, budget)
    assert geometry.activation_bytes(PAPER, tile) <= budget
    bigger = geometry.nearest_legal(PAPER, tile[0] + 1)[1]
    assert geometry.activation_bytes(PAPER, (bigger, bigger)) > budget
    with pytest.raises(ValueError, match="expected a memory budget"):
        geometry.largest_tile(PAPER, 1000)


@pytest.mark.parametrize(
    "kwargs",
    [dict(spatial_dims=4), dict(depth=0), dict(padding="reflect"), dict(upsampling="bilinear"), dict(dropout=1.0),
     dict(pool_factors=((2, 2),)), dict(pool_factors=((3, 2),) * 4)],
)
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ValueError, match="expected"):
        UNetConfig(**kwargs)


def test_config_round_trip() -> None:
    for name in ("paper", "aniso3d", "tiny"):
        config = preset(name)
        assert UNetConfig.from_dict(config.to_dict()) == config
        assert hash(config) == hash(UNetConfig.from_dict(config.to_dict()))
    with pytest.raises(ValueError, match="unknown keys"):
        UNetConfig.from_dict({"depht": 4})
