"""`UNetConfig`: the typed description of a U-Net, and the named presets.

The defaults are the network of Ronneberger, Fischer and Brox (MICCAI 2015), Fig. 1:
2D, four 2×2 max-pool levels, 64 → 1024 channels, unpadded ("valid") 3×3 convolutions,
one input channel, two classes, drop-out at the end of the contracting path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Padding = Literal["valid", "same"]
Upsampling = Literal["upconv", "transposed"]

PADDINGS: tuple[str, ...] = ("valid", "same")
UPSAMPLINGS: tuple[str, ...] = ("upconv", "transposed")


def _per_level(value: Any, depth: int, spatial_dims: int, what: str) -> tuple[tuple[int, ...], ...]:
    """Normalise a pooling spec to one per-axis tuple per level."""
    if value is None:
        return tuple((2,) * spatial_dims for _ in range(depth))
    levels = tuple(tuple(int(v) for v in level) for level in value)
    if len(levels) != depth:
        raise ValueError(f"expected {what} with one entry per level ({depth}), got {len(levels)}")
    for level in levels:
        if len(level) != spatial_dims or any(v not in (1, 2) for v in level):
            raise ValueError(
                f"expected each {what} entry to have {spatial_dims} factors of 1 or 2, got {level}"
            )
    return levels


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a U-Net's architecture (and so its checkpoint's shapes).

    The size rule (valid padding): every 2×2 max-pool must see an even size, and each
    3×3 valid convolution removes 2 px at its level's resolution. See `unetcore.geometry`.
    """

    spatial_dims: int = 2  # 2 (the paper) or 3
    depth: int = 4  # number of 2×2 max-pool levels (the paper: 4)
    base_channels: int = 64  # channels at the first level; doubled per level (64 … 1024)
    in_channels: int = 1  # grey-value EM
    num_classes: int = 2  # membrane (0) and cell (1): pixelwise softmax over these
    padding: Padding = "valid"  # "valid" = the paper's unpadded convs; "same" = zero-padded
    upsampling: Upsampling = "upconv"  # "upconv" = upsample then 2×2 conv; "transposed" = 2×2 stride 2
    dropout: float = 0.5  # drop-out at the end of the contracting path (the paper)
    pool_factors: tuple[tuple[int, ...], ...] | None = None  # per level, per axis (1 or 2); None = 2 everywhere
    kernel_size: int = 3  # convolution kernel (the paper: 3)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"expected spatial_dims 2 or 3, got {self.spatial_dims!r}")
        if not isinstance(self.depth, int) or self.depth < 1 or self.depth > 6:
            raise ValueError(f"expected depth between 1 and 6, got {self.depth!r}")
        if self.base_channels < 1 or self.in_channels < 1:
            raise ValueError(
                f"expected positive channel counts, got base_channels={self.base_channels}, "
                f"in_channels={self.in_channels}"
            )
        if self.num_classes < 2:
            raise ValueError(f"expected at least 2 classes for a softmax, got {self.num_classes}")
        if self.padding not in PADDINGS:
            raise ValueError(f"expected padding in {PADDINGS}, got {self.padding!r}")
        if self.upsampling not in UPSAMPLINGS:
            raise ValueError(f"expected upsampling in {UPSAMPLINGS}, got {self.upsampling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {self.dropout!r}")
        if self.kernel_size not in (1, 3, 5):
            raise ValueError(f"expected kernel_size 1, 3 or 5, got {self.kernel_size!r}")
        levels = _per_level(self.pool_factors, self.depth, self.spatial_dims, "pool_factors")
        object.__setattr__(self, "pool_factors", levels)

    @property
    def pools(self) -> tuple[tuple[int, ...], ...]:
        """Per-level, per-axis pooling factors (never None after construction)."""
        assert self.pool_factors is not None  # set in __post_init__
        return self.pool_factors

    def channels(self, level: int) -> int:
        """Feature channels at `level` (0 = first level, `depth` = bottleneck)."""
        return self.base_channels * (2**level)

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pool_factors"] = [list(level) for level in self.pools]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"expected UNetConfig keys {sorted(known)}, got unknown keys {sorted(unknown)}"
            )
        kwargs = dict(data)
        if kwargs.get("pool_factors") is not None:
            kwargs["pool_factors"] = tuple(tuple(level) for level in kwargs["pool_factors"])
        return cls(**kwargs)


PRESETS: dict[str, UNetConfig] = {
    # The network of the paper's Fig. 1: 572×572 in → 388×388 out, 31,030,658 parameters.
    "paper": UNetConfig(),
    # The same network with 2×2 stride-2 transposed convolutions (Caffe's "Deconvolution").
    "paper-transposed": UNetConfig(upsampling="transposed"),
    # A narrow 2D U-Net that trains on 2 CPU cores within an hour (the shipped ISBI model).
    "cpu": UNetConfig(base_channels=16),
    # A tiny 2D U-Net for the synthetic demo and tests.
    "tiny": UNetConfig(depth=3, base_channels=8),
    # Anisotropic 3D (e.g. ssTEM, 4×4×50 nm): no pooling in z at the first two levels.
    "aniso3d": UNetConfig(
        spatial_dims=3,
        base_channels=16,
        pool_factors=((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
    ),
}


def preset(name: str) -> UNetConfig:
    """A named configuration; raises with the list of names if `name` is unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"expected a preset in {sorted(PRESETS)}, got {name!r}") from None


__all__ = ["PRESETS", "UNetConfig", "preset"]
