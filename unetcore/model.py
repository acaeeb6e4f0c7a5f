"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), for 2D and 3D.

Input ``(B, in_channels, *S)`` with ``S`` a legal tile (see `unetcore.geometry`); output the
class scores ``(B, num_classes, *S')`` with ``S' = S − 2·halo`` for valid padding (the paper:
572×572 → 388×388). `predict_proba` applies the pixelwise softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from unetcore.blocks import CONV, ConvBlock, Down, Up, center_crop, he_init_
from unetcore.config import UNetConfig
from unetcore.geometry import output_shape


class UNet(nn.Module):
    """Contracting path, bottleneck, expanding path with copy-and-crop skips, 1×1 head."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        dims, k, pad = config.spatial_dims, config.kernel_size, config.padding
        self.down_blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = config.in_channels
        for level in range(config.depth):
            cout = config.channels(level)
            self.down_blocks.append(ConvBlock(dims, cin, cout, k, pad))
            self.pools.append(Down(dims, config.pools[level]))
            cin = cout
        self.bottleneck = ConvBlock(dims, cin, config.channels(config.depth), k, pad)
        # Drop-out at the end of the contracting path: after the deepest encoder block and
        # after the bottleneck, as in the authors' Caffe model.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(config.depth)):
            cup, cout = config.channels(level + 1), config.channels(level)
            self.ups.append(Up(dims, cup, cout, config.pools[level], config.upsampling))
            self.up_blocks.append(ConvBlock(dims, 2 * cout, cout, k, pad))
        self.head = CONV[dims](config.channels(0), config.num_classes, 1)
        self.apply(he_init_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits); paper sizes in the comments: (1, 1, 572, 572) in."""
        if x.ndim != self.config.spatial_dims + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input (B, {self.config.in_channels}, "
                f"{', '.join('S' for _ in range(self.config.spatial_dims))}), got {tuple(x.shape)}"
            )
        output_shape(self.config, tuple(x.shape[2:]))  # a clear error for an illegal tile
        skips = []
        last = self.config.depth - 1
        for level, (block, pool) in enumerate(zip(self.down_blocks, self.pools, strict=True)):
            x = block(x)  # (1, 64, 568, 568) … (1, 512, 64, 64)
            if level == last:
                x = self.dropout(x)
            skips.append(x)
            x = pool(x)  # (1, 64, 284, 284) … (1, 512, 32, 32)
        x = self.dropout(self.bottleneck(x))  # (1, 1024, 28, 28)
        for up, block in zip(self.ups, self.up_blocks, strict=True):
            x = up(x)  # (1, 512, 56, 56) … (1, 64, 392, 392)
            skip = center_crop(skips.pop(), x.shape[2:])  # copy and crop
            x = block(torch.cat([skip, x], dim=1))  # (1, 512, 52, 52) … (1, 64, 388, 388)
        return self.head(x)  # (1, 2, 388, 388)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Pixelwise softmax over the classes: (B, K, *S') probabilities."""
        return torch.softmax(self.forward(x).float(), dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
