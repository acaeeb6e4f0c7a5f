"""Grey-value normalisation stored with the model (one per dataset, never per tile).

Per-tile statistics would leave seams at tile borders; a fixed affine map does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_DTYPE_SCALE = {np.dtype(np.uint8): 1 / 255.0, np.dtype(np.uint16): 1 / 65535.0}


def dtype_scale(dtype: np.dtype) -> float:
    """Factor that maps the dtype's full range to [0, 1] (1 for floats)."""
    dtype = np.dtype(dtype)
    if dtype in _DTYPE_SCALE:
        return _DTYPE_SCALE[dtype]
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ValueError(f"expected uint8, uint16 or float grey values, got dtype {dtype}")


@dataclass(frozen=True)
class Normalization:
    """x ↦ (x · dtype_scale − mean) / std, with mean/std measured on [0, 1] grey values."""

    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"expected a finite mean and a positive std, got {self.mean}, {self.std}")

    def apply(self, image: np.ndarray) -> np.ndarray:
        """float32 normalised copy of `image` (uint8, uint16 or float in [0, 1])."""
        scaled = np.asarray(image, dtype=np.float32) * np.float32(dtype_scale(image.dtype))
        return (scaled - np.float32(self.mean)) / np.float32(self.std)

    @classmethod
    def fit(cls, images: list[np.ndarray] | np.ndarray) -> Normalization:
        """Mean and std of the training images' [0, 1] grey values."""
        arrays = images if isinstance(images, list) else [images]
        values = np.concatenate(
            [np.asarray(a, np.float64).ravel() * dtype_scale(a.dtype) for a in arrays]
        )
        return cls(mean=float(values.mean()), std=float(max(values.std(), 1e-6)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(mean=float(data["mean"]), std=float(data["std"]))
