"""The stored probability's dtypes, named once for the pipeline, its flows and its CLI.

* ``uint8``: round(p·255) (the default: 1 byte per voxel, steps of 1/255);
* ``float16``: p to about 3 decimal digits;
* ``float32``: p as the model computed it (blocked = whole, bit for bit, on CPU).
"""

from __future__ import annotations

OUTPUT_DTYPES: tuple[str, ...] = ("uint8", "float16", "float32")

__all__ = ["OUTPUT_DTYPES"]
