"""The training energy of the paper (Eq. 1), with the minus sign the printed equation drops.

    E = − Σ_x w(x) · log p_ℓ(x)(x),      p = softmax over the K class scores

on the output window of a valid-convolution network: labels and weights, given on the
input tile's grid, are centre-cropped to the logits' spatial shape first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def crop_center(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Centre-crop the trailing len(shape) axes of `t` to `shape`."""
    spatial = t.shape[t.ndim - len(shape) :]
    index: list[slice] = [slice(None)] * (t.ndim - len(shape))
    for have, want in zip(spatial, shape, strict=True):
        if have < want or (have - want) % 2:
            raise ValueError(
                f"expected a target at least as large as the output with an even difference, "
                f"got target {tuple(spatial)} for output {tuple(shape)}"
            )
        lo = (have - want) // 2
        index.append(slice(lo, lo + want))
    return t[tuple(index)]


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pixelwise softmax + weighted cross-entropy (positive; lower is better).

    logits (B, K, *S'); labels (B, *S) integer classes; weights (B, *S) or None (= 1).
    Labels and weights larger than S' are centre-cropped to it. `reduction="mean"` divides
    the energy by the number of output pixels (the learning rate then does not depend on
    the tile size); "sum" returns E itself.
    """
    out = logits.shape[2:]
    labels = crop_center(labels, out).long()
    per_pixel = F.cross_entropy(logits.float(), labels, reduction="none")  # −log p_ℓ(x)
    if weights is not None:
        per_pixel = per_pixel * crop_center(weights, out).float()
    if reduction == "mean":
        return per_pixel.mean()
    if reduction == "sum":
        return per_pixel.sum()
    raise ValueError(f"expected reduction 'mean' or 'sum', got {reduction!r}")
