"""The paper's network: parameters, He initialisation, copy-and-crop, 2D and 3D."""

from __future__ import annotations

import math

import pytest
import torch

from unetcore import geometry
from unetcore.config import UNetConfig, preset
from unetcore.model import UNet, count_parameters


@pytest.mark.parametrize("name", ["paper", "paper-transposed"])
def test_paper_parameter_count(name: str) -> None:
    assert count_parameters(UNet(preset(name))) == 31_030_658


def test_23_convolutional_layers() -> None:
    model = UNet(preset("paper"))
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 23


def test_he_initialisation_std() -> None:
    torch.manual_seed(0)
    model = UNet(preset("paper"))
    conv = model.down_blocks[1].conv2  # 3×3 over 128 channels: N = 1152
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0
    up = UNet(preset("paper-transposed")).ups[0].conv  # transposed 2×2 stride 2: N = 1024
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.02)


def test_softmax_probabilities() -> None:
    model = UNet(preset("tiny").replace(base_channels=2)).eval()
    p = model.predict_proba(torch.randn(2, 1, 100, 92))
    assert p.shape == (2, 2, 12, 4)
    assert torch.allclose(p.sum(1), torch.ones(2, 12, 4))


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = UNet(preset("tiny").replace(base_channels=4))
    x = torch.randn(1, 1, 92, 92)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_3d_from_the_same_code() -> None:
    config = UNetConfig(spatial_dims=3, depth=2, base_channels=2, pool_factors=((1, 2, 2), (2, 2, 2)))
    model = UNet(config).eval()
    tile = tuple(s + extra for s, extra in zip(geometry.smallest_input_shape(config), (2, 4, 8)))
    assert geometry.is_legal(config, tile)
    with torch.no_grad():
        out = model(torch.zeros((1, 1) + tile))
    assert tuple(out.shape) == (1, 2) + geometry.output_shape(config, tile)


def test_wrong_channels_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected input \(B, 1, S, S\)"):
        UNet(preset("tiny").replace(base_channels=2))(torch.zeros(1, 3, 92, 92))


def test_flops_counted_from_modules_match_a_hand_count() -> None:
    """depth 1, base 2, 18×22 tile: two convs, pool, two convs, up, two convs, head."""
    from unetcore.flops import forward_flops

    config = UNetConfig(depth=1, base_channels=2, upsampling="transposed", dropout=0.0)
    model = UNet(config)
    # sizes per axis: 18→16→14 │pool 7→5→3 │up 6 (concat 2+2) →4→2 ; 22→20→18 │9→7→5 │10→8→6
    convs = [
        (16 * 20, 1, 2), (14 * 18, 2, 2),          # level 0: 3×3, cin→cout
        (5 * 7, 2, 4), (3 * 5, 4, 4),              # bottleneck
        (4 * 8, 4, 2), (2 * 6, 2, 2),              # decoder convs (concat 4 channels in)
    ]
    expected = sum(2 * n * cin * 9 * cout for n, cin, cout in convs)
    expected += 2 * (3 * 5) * 2 * 4 * 4  # transposed 2×2: every input voxel × out channels × taps × in channels
    expected += 2 * (2 * 6) * 2 * 2  # 1×1 head
    assert forward_flops(model, (18, 22)) == expected
