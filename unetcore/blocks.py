"""Building blocks of the U-Net, written once for 2D and 3D (the conv type is a parameter)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def he_init_(module: nn.Module) -> None:
    """Gaussian init with std √(2/N), N = incoming connections of one neuron (the paper).

    For a k×k conv over C channels N = k²·C; for a stride-s transposed conv with kernel s
    each output sees one kernel tap per input channel, so N = C.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        taps = math.prod(module.kernel_size) // math.prod(module.stride)
        fan_in = module.in_channels * max(taps, 1)
    elif isinstance(module, nn.modules.conv._ConvNd):
        fan_in = module.in_channels * math.prod(module.kernel_size)
    else:
        return
    nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvBlock(nn.Module):
    """Two k×k convolutions, each followed by ReLU (valid: each removes k−1 px per axis)."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int, padding: str) -> None:
        super().__init__()
        pad = 0 if padding == "valid" else kernel // 2
        conv = CONV[dims]
        self.conv1 = conv(cin, cout, kernel, padding=pad)
        self.conv2 = conv(cout, cout, kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)  # (B, cout, *S − (k−1))
        return F.relu(self.conv2(x), inplace=True)  # (B, cout, *S − 2(k−1))


class Down(nn.Module):
    """Max-pool with kernel = stride = the level's per-axis factors (identity if all 1)."""

    def __init__(self, dims: int, factors: Sequence[int]) -> None:
        super().__init__()
        self.factors = tuple(factors)
        self.pool = POOL[dims](self.factors, self.factors) if max(self.factors) > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pool is None else self.pool(x)  # (B, C, *S / factors)


class Up(nn.Module):
    """The "up-convolution": doubles the size (per pooled axis) and halves the channels.

    ``upconv``: nearest up-sampling, then a 2×2 convolution (the paper's wording). To keep the
    paper's sizes exact, the up-sampled map is extended by one replicated pixel at its high
    edge first; `unetcore.geometry.high_margin` accounts for the output pixels this touches.
    ``transposed``: a 2×2 stride-2 transposed convolution (Caffe's Deconvolution).
    """

    def __init__(self, dims: int, cin: int, cout: int, factors: Sequence[int], mode: str) -> None:
        super().__init__()
        self.factors = tuple(factors)
        self.mode = mode
        if mode == "transposed":
            self.conv = CONV_T[dims](cin, cout, self.factors, stride=self.factors)
        else:
            self.conv = CONV[dims](cin, cout, self.factors)
            # F.pad takes (last_lo, last_hi, …, first_lo, first_hi).
            self._pad = tuple(v for f in reversed(self.factors) for v in (0, f - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            return self.conv(x)  # (B, cout, *S · factors)
        x = F.interpolate(x, scale_factor=self.factors, mode="nearest")  # (B, cin, *S · f)
        if any(self._pad):
            x = F.pad(x, self._pad, mode="replicate")  # (B, cin, *S · f + f − 1)
        return self.conv(x)  # (B, cout, *S · factors)


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial centre of `x` to `shape` ("copy and crop" of the skip connection)."""
    spatial = x.shape[2:]
    slices = [slice(None), slice(None)]
    for have, want in zip(spatial, shape, strict=True):
        lo = (have - want) // 2
        slices.append(slice(lo, lo + want))
    return x[tuple(slices)]
