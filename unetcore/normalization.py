"""Grey-value normalisation stored with the model (one per dataset, never per tile).

Per-tile statistics would leave seams at tile borders; a fixed affine map does not.

Grey values first become [0, 1] by a *grey range* ``(lo, hi)``: by default the dtype's
full range (uint8 0–255, uint16 0–65535; floats are taken as already in [0, 1]), or the
range the data really uses when the user or the volume says so (a 12-bit camera in uint16:
``(0, 4095)``; a float volume holding 0–255). Then the model's mean/std apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_DTYPE_SCALE = {np.dtype(np.uint8): 1 / 255.0, np.dtype(np.uint16): 1 / 65535.0}


def default_grey_range(dtype: np.dtype) -> tuple[float, float]:
    """The grey range a dtype implies: its full range for uint8/uint16, (0, 1) for floats."""
    return (0.0, 1.0 / dtype_scale(dtype))


def check_grey_range(grey_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate a (lo, hi) grey range (None passes)."""
    if grey_range is None:
        return None
    if len(grey_range) != 2:
        raise ValueError(f"expected a grey range of two values (lo, hi), got {tuple(grey_range)}")
    lo, hi = (float(v) for v in grey_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"expected a grey range lo < hi of finite values, got ({lo}, {hi})")
    return lo, hi


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

    def apply(self, image: np.ndarray, grey_range: tuple[float, float] | None = None) -> np.ndarray:
        """float32 normalised copy of `image`: its ``grey_range`` (default: the dtype's) to
        [0, 1], then (· − mean) / std."""
        if grey_range is None:
            scaled = np.asarray(image, dtype=np.float32) * np.float32(dtype_scale(image.dtype))
        else:
            lo, hi = check_grey_range(grey_range)  # type: ignore[misc]
            scaled = (np.asarray(image, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        return (scaled - np.float32(self.mean)) / np.float32(self.std)

    def apply_tensor(self, tensor: Any, source_dtype: np.dtype, grey_range: tuple[float, float] | None = None) -> Any:
        """`apply` on a torch tensor of raw grey values of ``source_dtype``, on its device:
        the same float32 operations in the same order (on a GPU a scalar division may round
        in the last bit)."""
        import torch

        x = tensor.to(torch.float32)
        if grey_range is None:
            x = x * float(np.float32(dtype_scale(source_dtype)))
        else:
            lo, hi = check_grey_range(grey_range)  # type: ignore[misc]
            x = (x - float(np.float32(lo))) * float(np.float32(1.0 / (hi - lo)))
        return (x - float(np.float32(self.mean))) / float(np.float32(self.std))

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
