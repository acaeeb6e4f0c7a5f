"""Viewer pyramid levels of a finished output: 2× mean in (y, x), computed on the Dask workers.

Levels go to ``OUT.zarr/pyramid/<name>/<k>`` and into the OME multiscales of ``<name>``, so a
viewer opens the probability at any zoom; the blocks never see them (`segment` writes them
after the last block, with ``pyramid_levels``, on the workers of the run)::

    client (metadata only)                      workers
    ──────────────────────                      ───────
    level k + 1: create the array, list the     read 2× region of level k → mean → write
    regions not marked done, submit them  ────► the region's whole chunks, mark it done
    every region done: "complete" record        (`pipeline.pyramid_regions`)
    … next level; then the OME multiscales

One pass per level, level k + 1 from level k. The client never reads voxels. Each written
region leaves a marker in the output's ledger (``ledger/pyramid/<name>/<k>``), so a run with
``resume=True`` skips the regions and levels already written; a pass that writes anything
makes the levels above it stale, and they are written again. Without a client the same
tasks run in this process, one after another. The values equal the former serial
client-side computation bit for bit (same float32 arithmetic on the same voxels).

Levels stop at a sensible size: after level 1, a level is written only while the level
below it is larger than one chunk in y or x (a viewer shows a level that fits in one chunk
as one tile; halving it again gives identical-looking, ever coarser 1×1 levels). Fewer
levels than asked is logged as a warning and visible in the returned paths.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.output import AXES, DENSE, PYRAMID_GROUP, ome_attrs, ome_dataset, ome_multiscale, open_group, zstd
from pipeline.pyramid_regions import REGION_VOXELS, RegionMarkers, region_grid, region_roi, region_shape, write_region
from pipeline.volume import multiscales_of, redact_url

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


class PyramidError(RuntimeError):
    """Regions of a pyramid level failed; the ones written are kept for a resumed run."""


@dataclass
class PyramidStats:
    """What `write_pyramid` did: regions written and skipped, levels skipped whole, time."""

    paths: list[str]
    written: int = 0  # regions written in this call
    skipped: int = 0  # regions already marked done (resume)
    levels_skipped: int = 0  # levels already complete (resume)
    seconds: float = 0.0


def write_pyramid(output_url: str, levels: int, **options: Any) -> list[str]:
    """Write levels 1..``levels`` (2× mean in y, x) of the probability array; the level
    paths. ``options`` are `pyramid`'s (name, storage_options, client, resume, …)."""
    return pyramid(output_url, levels, **options).paths


def pyramid(
    output_url: str,
    levels: int,
    *,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
    resume: bool = False,
    max_in_flight: int | None = None,
    region_voxels: int = REGION_VOXELS,
) -> PyramidStats:
    """Write levels 1..``levels`` of ``name`` (default: the output's probability) on
    ``client``'s workers (None: in this process), level by level, region by region.

    Run after all blocks finished. Levels go to ``pyramid/<name>/<k>`` and are added to the
    OME multiscales of ``name``. ``resume`` keeps the regions and levels whose markers say
    they are written (only valid if the probability did not change since); otherwise every
    level is written anew. ``stats.paths`` lists the level paths (``name`` first): fewer
    than ``levels + 1`` when the levels reached one chunk earlier (`useful_levels`; logged
    as a warning). Failed regions raise `PyramidError` after the pass.
    """
    if levels < 1:
        raise ValueError(f"expected at least 1 pyramid level, got {levels}")
    start = time.perf_counter()
    group = open_group(output_url, "r+", storage_options)
    attrs = dict(group.attrs.asdict())
    meta = attrs.get("emunet") or {}
    name = name or (meta.get("output") or {}).get("name", "probability")
    voxel = tuple(meta.get("voxel_size_nm") or (1.0, 1.0, 1.0))
    source = group[name]
    stats = PyramidStats([name])
    count = useful_levels(source.shape[1:], source.chunks[1:], levels)
    if count < levels:
        log.warning(
            "pyramid: wrote %d of the %d levels asked for %s: the (y, x) size %s reaches one chunk %s "
            "after %d level(s); more would only repeat it coarser",
            count, levels, name, tuple(source.shape[1:]), tuple(source.chunks[1:]), count,
        )
    if client is not None and max_in_flight is None:
        max_in_flight = 2 * max(1, sum(client.nthreads().values()))
    stale = not resume  # a level below was (re)written: the markers of this one are void
    for k in range(1, count + 1):
        shape = (source.shape[0], -(-source.shape[1] // 2), -(-source.shape[2] // 2))
        chunks = tuple(min(c, s) for c, s in zip(source.chunks, shape, strict=True))
        path = f"{PYRAMID_GROUP}/{name}/{k}"
        region = region_shape(shape, chunks, region_voxels)
        geometry = {"source": source.path, "shape": list(shape), "chunks": list(chunks), "dtype": str(source.dtype),
                    "region": list(region)}  # fmt: skip
        markers = RegionMarkers(output_url, name, k, storage_options)
        level = None if stale else _matching_level(group, path, geometry, markers)
        if level is not None and markers.record("complete") == geometry:
            stats.levels_skipped += 1
        else:
            if level is None:
                markers.reset()
                level = group.create_array(
                    path, shape=shape, chunks=chunks, dtype=source.dtype, fill_value=0,
                    dimension_names=AXES, compressors=zstd(), overwrite=True, config=DENSE,
                )  # fmt: skip
                markers.write_record("pass", geometry)
            done, total = markers.done(), math.prod(region_grid(shape, region))
            todo = [r for r in range(total) if r not in done]
            stats.skipped += total - len(todo)
            jobs = _jobs(output_url, name, k, source.path, path, shape, region, todo, storage_options)
            _run_pass(client, jobs, k, max_in_flight)
            stats.written += len(todo)
            stale = stale or bool(todo)
            markers.write_record("complete", geometry)
        source = level
        stats.paths.append(path)
    datasets = [ome_dataset(p, voxel, (1, 2**k, 2**k)) for k, p in enumerate(stats.paths)]
    multiscales = [m for m in (multiscales_of(attrs) or []) if m.get("name") != name]
    multiscales.insert(0, ome_multiscale(name, datasets, kind="mean"))
    for m in multiscales:
        m.setdefault("version", "0.4")
    group.attrs.update(ome_attrs(multiscales))
    stats.seconds = time.perf_counter() - start
    log.info(
        "pyramid: %d level(s) of %s, %d region(s) written, %d skipped, %d level(s) already complete, in %.2f s",
        count, name, stats.written, stats.skipped, stats.levels_skipped, stats.seconds,
    )  # fmt: skip
    return stats


def _matching_level(group: Any, path: str, geometry: dict[str, Any], markers: RegionMarkers) -> Any:
    """The existing level array if it and its pass record match ``geometry``, else None."""
    if markers.record("pass") != geometry:
        return None
    try:
        level = group[path]
    except KeyError:
        return None
    same = (list(level.shape), list(level.chunks), str(level.dtype)) == (geometry["shape"], geometry["chunks"], geometry["dtype"])
    return level if same else None


def _jobs(
    url: str, name: str, k: int, source: str, target: str, shape: Sequence[int], region: Sequence[int],
    todo: list[int], storage_options: Mapping[str, Any] | None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    for r in todo:
        offset, size = region_roi(r, shape, region)
        job = {"url": str(url), "name": name, "level": k, "source": source, "target": target, "region": r,
               "offset": offset, "shape": size}  # fmt: skip
        if storage_options:
            job["storage_options"] = dict(storage_options)
        yield job


def _run_pass(client: Any, jobs: Iterator[dict[str, Any]], k: int, max_in_flight: int | None) -> None:
    """Every job of one level: on ``client``'s workers (bounded), or here without a client."""
    if client is None:
        for job in jobs:
            write_region(job)
        return
    from pipeline.submit import submit_bounded

    failed: list[tuple[dict[str, Any], BaseException]] = []
    submit_bounded(
        client, write_region, jobs, max_in_flight=max_in_flight or 2, resources={},
        on_result=lambda job, result: None, on_error=lambda job, exc: failed.append((job, exc)),
        key_prefix=f"emunet-pyramid-{k}",
    )  # fmt: skip
    if failed:
        job, exc = min(failed, key=lambda f: f[0]["region"])
        raise PyramidError(
            f"expected every region of pyramid level {k} of {redact_url(job['url'])} written, got {len(failed)} "
            f"failed (first: region {job['region']} at offset {tuple(job['offset'])}, shape {tuple(job['shape'])}: "
            f"{type(exc).__name__}: {exc}); fix the cause and rerun with --resume (resume=True): the regions "
            "written are kept"
        ) from exc


__all__ = ["PyramidError", "PyramidStats", "pyramid", "useful_levels", "write_pyramid"]
