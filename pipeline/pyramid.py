"""Viewer pyramid levels of a finished output: 2× mean in (y, x), written chunk by chunk.

Levels go to ``OUT.zarr/pyramid/<name>/<k>`` and into the OME multiscales of ``<name>``, so a
viewer opens the probability at any zoom; the blocks never see them (`segment` writes them
after the last block, with ``pyramid_levels``).

Levels stop at a sensible size: after level 1, a level is written only while the level
below it is larger than one chunk in y or x (a viewer shows a level that fits in one chunk
as one tile; halving it again gives identical-looking, ever coarser 1×1 levels). Fewer
levels than asked is logged as a warning and visible in the returned paths.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.output import AXES, DENSE, PYRAMID_GROUP, ome_attrs, ome_dataset, ome_multiscale, open_group, zstd
from pipeline.volume import multiscales_of

log = logging.getLogger(__name__)


def useful_levels(shape_yx: Sequence[int], chunk_yx: Sequence[int], asked: int) -> int:
    """How many of ``asked`` 2× (y, x) levels are worth writing above a base of ``shape_yx``.

    Level 1 is written when the base is larger than 1×1; level k > 1 only while level k - 1
    is larger than one chunk (``chunk_yx``) in y or x. E.g. a 40×56 base with 16×16 chunks
    gets at most 2 levels (20×28, 10×14), a 1×1 base none.
    """
    y, x = (int(s) for s in shape_yx)
    cy, cx = (max(1, int(c)) for c in chunk_yx)
    count = 0
    while count < asked:
        if count == 0 and y <= 1 and x <= 1:
            break
        if count > 0 and y <= cy and x <= cx:
            break
        y, x = -(-y // 2), -(-x // 2)
        count += 1
    return count


def _downsample_mean(block: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """2× mean in y and x; an odd edge row/column averages the voxels that exist."""
    z, y, x = out_shape
    pad = [(0, 0), (0, 2 * y - block.shape[1]), (0, 2 * x - block.shape[2])]
    padded = np.pad(block.astype(np.float32), pad, mode="edge")
    return padded.reshape(z, y, 2, x, 2).mean(axis=(2, 4))


def write_pyramid(
    output_url: str,
    levels: int,
    *,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write levels 1..``levels`` (2× mean in y, x) of the probability array, chunk by chunk.

    Run after all blocks finished. Levels go to ``pyramid/<name>/<k>`` and are added to the
    OME multiscales of ``name``. Returns the level paths (``name`` first): fewer than
    ``levels + 1`` when the levels reached one chunk earlier (`useful_levels`; logged as a
    warning).
    """
    if levels < 1:
        raise ValueError(f"expected at least 1 pyramid level, got {levels}")
    group = open_group(output_url, "r+", storage_options)
    attrs = dict(group.attrs.asdict())
    meta = attrs.get("emunet") or {}
    name = name or (meta.get("output") or {}).get("name", "probability")
    voxel = tuple(meta.get("voxel_size_nm") or (1.0, 1.0, 1.0))
    source = group[name]
    paths = [name]
    count = useful_levels(source.shape[1:], source.chunks[1:], levels)
    if count < levels:
        log.warning(
            "pyramid: wrote %d of the %d levels asked for %s: the (y, x) size %s reaches one chunk %s "
            "after %d level(s); more would only repeat it coarser",
            count, levels, name, tuple(source.shape[1:]), tuple(source.chunks[1:]), count,
        )
    for k in range(1, count + 1):
        prev = source
        shape = (prev.shape[0], -(-prev.shape[1] // 2), -(-prev.shape[2] // 2))
        chunks = tuple(min(c, s) for c, s in zip(source.chunks, shape, strict=True))
        path = f"{PYRAMID_GROUP}/{name}/{k}"
        level = group.create_array(
            path, shape=shape, chunks=chunks, dtype=prev.dtype, fill_value=0,
            dimension_names=AXES, compressors=zstd(), overwrite=True, config=DENSE,
        )
        grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
        for z0 in grid[0]:
            for y0 in grid[1]:
                for x0 in grid[2]:
                    out = tuple(min(c, s - o) for c, s, o in zip(chunks, shape, (z0, y0, x0), strict=True))
                    src = np.asarray(prev[z0 : z0 + out[0], 2 * y0 : 2 * (y0 + out[1]), 2 * x0 : 2 * (x0 + out[2])])
                    mean = _downsample_mean(src, out)
                    if np.issubdtype(level.dtype, np.integer):
                        mean = np.rint(mean)
                    level[z0 : z0 + out[0], y0 : y0 + out[1], x0 : x0 + out[2]] = mean.astype(level.dtype)
        source = level
        paths.append(path)
    datasets = [ome_dataset(p, voxel, (1, 2**k, 2**k)) for k, p in enumerate(paths)]
    multiscales = [m for m in (multiscales_of(attrs) or []) if m.get("name") != name]
    multiscales.insert(0, ome_multiscale(name, datasets, kind="mean"))
    for m in multiscales:
        m.setdefault("version", "0.4")
    group.attrs.update(ome_attrs(multiscales))
    return paths


__all__ = ["write_pyramid"]
