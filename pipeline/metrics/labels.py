"""4-connected labelling helpers.

The Java metrics label with ImageJ's ``connectedComponents(image, 4)``; every score here
depends only on the *partition* into segments (a contingency table is invariant under
renumbering), so :func:`scipy.ndimage.label` with the cross-shaped structuring element is
exactly equivalent even though its label numbers differ from ImageJ's.

Label 0 is the background (membrane / proposal boundary); segments are ``1..n``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["STRUCTURE_4", "STRUCTURE_8", "label4", "label8"]

#: 4-connectivity (edge neighbours) in 2D.
STRUCTURE_4 = ndimage.generate_binary_structure(2, 1)
#: 8-connectivity (edge and corner neighbours) in 2D.
STRUCTURE_8 = ndimage.generate_binary_structure(2, 2)


def _label(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D mask (Y, X), got ndim={arr.ndim} with shape {arr.shape}")
    labels = np.empty(arr.shape, dtype=np.int32)
    count = ndimage.label(arr != 0, structure=structure, output=labels)
    return labels, int(count)


def label4(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of the non-zero pixels of a 2D mask: ``(int32 labels, count)``."""
    return _label(mask, STRUCTURE_4)


def label8(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of the non-zero pixels of a 2D mask: ``(int32 labels, count)``."""
    return _label(mask, STRUCTURE_8)
