"""Floating-point operations of one forward pass (multiply-adds count as 2 FLOPs).

Counted from the real modules with forward hooks on PyTorch's "meta" device: shapes
propagate, nothing is computed, so even the paper's 572×572 tile costs microseconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from unetcore.model import UNet


def forward_flops(model: UNet, shape: Sequence[int], batch: int = 1) -> int:
    """FLOPs of the convolutions for one forward pass on a tile of `shape`."""
    meta = copy.deepcopy(model).to("meta")
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        taps = math.prod(module.kernel_size) * module.in_channels // module.groups
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            # every input voxel scatters into kernel taps of every output channel
            total += 2 * inputs[0].numel() * module.out_channels * math.prod(module.kernel_size) // module.groups
        else:
            total += 2 * output.numel() * taps

    handles = [
        m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.modules.conv._ConvNd)
    ]
    try:
        with torch.no_grad():
            meta(torch.zeros((batch, model.config.in_channels) + tuple(shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total
