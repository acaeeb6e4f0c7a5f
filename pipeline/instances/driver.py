"""The instance stage end to end: `run_instances(url, config)` on an `emunet segment` output.

Stages, each a set of independent tasks with its own ledger (``ledger/instances/<stage>``),
so an interrupted run resumes at the first task not done::

    check ─► fragments (per block) ─► graph (per block) ─► tree l0 … l_top (per node) ─► relabel (per block)

``check`` runs before anything is written: the map's dims and dtype, that it holds cells
(some p > seed_threshold) and boundaries (some p ≤ seed_threshold, for the watershed),
the thresholds, and, on ``resume``, that the stored config is the same. A resumed run with
another ``labels_threshold`` only relabels (the tree is stored for every threshold).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.volume import fsspec_filesystem, is_remote, local_path, redact_url

from .agglomerate import TreeGeometry, leaf_task, node_task
from .config import RESUME_KEYS, InstanceConfig
from .fragments import fragments_task
from .layout import AXES, FRAGMENTS, GROUP, NEURON_IDS, PROBABILITY, InstanceJob, default_block_shape, open_group, probability_info
from .region_graph import graph_task
from .relabel import relabel_task
from .runner import TaskSpec, run_stage

__all__ = ["InstanceSummary", "InstancesExistError", "prepare", "run_instances"]


LONG_NAMES = {FRAGMENTS: "fragments (over-segmentation), uint64 ids unique over the volume",
              NEURON_IDS: "neuron instance labels (0 = background)"}


class InstancesExistError(FileExistsError):
    """The store holds instance results and neither resume nor overwrite was asked for."""


@dataclass(frozen=True)
class InstanceSummary:
    """What a run produced (counts cover the tasks this run executed)."""

    url: str
    mode: str
    block_shape: tuple[int, int, int]
    num_blocks: int
    tree_levels: int
    thresholds: tuple[float, ...]
    labels_threshold: float
    fragments: int  # fragments made by this run (0 when resumed past that stage)
    edges: int
    segments: dict[float, int] = field(default_factory=dict)  # at the labels threshold (if relabelled whole here)
    size_histogram: dict[str, int] = field(default_factory=dict)  # segment voxels, log2 bins, of labels
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage (tree: all levels)
    notes: tuple[str, ...] = ()  # warnings worth a look (an auto mode chosen on a placeholder voxel size)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["segments"] = {str(k): v for k, v in self.segments.items()}
        return out


def _sample_range(array: Any, count: int) -> tuple[float, float]:
    """Min and max over up to ``count`` chunks (or shards) of ``array``: the middle one first, then spread."""
    unit = getattr(array, "shards", None) or array.chunks
    grid = [max(1, -(-n // c)) for n, c in zip(array.shape, unit, strict=True)]
    total = math.prod(grid)
    order = [total // 2] + [round(i * (total - 1) / max(count - 2, 1)) for i in range(count - 1)]
    lo, hi = math.inf, -math.inf
    for flat in dict.fromkeys(order):  # unique, in order
        index = np.unravel_index(flat, grid)
        part = np.asarray(array[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, unit, strict=True))])
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    return lo, hi


def _check_map(job: InstanceJob, client: Any, sample: int = 4) -> None:
    """The map holds cells (some p > seed_threshold) and, for the watershed, boundaries.

    A few chunks read here almost always settle it (a chunk of a real map holds both); only a
    map that they do not settle is reduced in full (Dask min/max over every chunk).
    """
    array = job.group("r")[PROBABILITY]
    th = job.config.seed_threshold * (255 if str(array.dtype) == "uint8" else 1)
    need_lo = job.config.method == "watershed"
    lo, hi = _sample_range(array, sample)
    if hi <= th or (need_lo and lo > th):
        import dask.array as da

        arr = da.from_zarr(array)
        parts = [arr.min(), arr.max()]
        # client None: this process (threads), even if a distributed client is the default scheduler
        lo, hi = (float(v) for v in (da.compute(*parts, scheduler="threads") if client is None
                                     else client.compute(parts, sync=True)))
    if hi <= th:
        raise ValueError(
            f"expected cells in the probability map (some p > seed_threshold {job.config.seed_threshold}), got "
            f"an all-boundary map (max {hi:g} in stored units); check the model, or lower --seed-threshold"
        )
    if need_lo and lo > th:
        raise ValueError(
            f"expected boundaries in the probability map (some p ≤ {job.config.seed_threshold}), got none "
            f"(min {lo:g} in stored units); nothing separates cells, so there is nothing to segment"
        )


OWN_MARK = {"stage": "instances"}  # the `emunet` attribute of the arrays the stage writes


def _instance_node(node: Any) -> bool:
    """``node`` is what the instance stage writes: its arrays carry `OWN_MARK` (or, from earlier
    versions, their long name), its group the config and layout."""
    attrs = dict(node.attrs.asdict())
    if hasattr(node, "dtype"):
        mark = attrs.get("emunet")
        return (isinstance(mark, dict) and mark.get("stage") == OWN_MARK["stage"]) or attrs.get("long_name") in LONG_NAMES.values()
    return "config" in attrs and "layout" in attrs


def _check_store(url: str, group: Any, storage_options: Mapping[str, Any] | None) -> None:
    """The store is a finished `emunet segment` output: the stage writes into the store it reads,
    and emunet writes only into stores it made; blocks not yet segmented would read as membrane."""
    from pipeline.ownership import describe_kind, store_kind

    kind = store_kind(dict(group.attrs.asdict()))
    if kind not in ("segment", "emunet"):
        raise ValueError(
            f"expected an `emunet segment` output at {redact_url(url)}, got {describe_kind(kind)}; the instance stage "
            "writes `fragments`, `neuron_ids` and `instances/` into the store it reads, and emunet writes only into "
            "its own outputs: make the probability map with `emunet segment`"
        )
    if kind != "segment":
        return
    from pipeline.ledger import Ledger

    summary = Ledger.open(url, storage_options).summary()
    if not summary.complete:
        raise ValueError(
            f"expected a finished segment output, got {summary.done} of {summary.total} blocks done in "
            f"{redact_url(url)} (the others would read as membrane); finish it with `emunet segment … --resume` "
            "first (`emunet status` shows what is missing)"
        )


def prepare(url: str, config: InstanceConfig, *, storage_options: Mapping[str, Any] | None = None,
            resume: bool = False, overwrite: bool = False) -> InstanceJob:
    """Validate everything and return the job (nothing written yet)."""
    if resume and overwrite:
        raise ValueError("expected at most one of resume and overwrite, got both")
    if not is_remote(url):  # tasks run on workers whose working directory may differ
        url = os.path.abspath(local_path(url))
    info = probability_info(url, storage_options)
    mode = config.resolved_mode(info.voxel_size)
    block = config.block_shape or default_block_shape(info, mode)
    job = InstanceJob(url, info.shape, info.chunks, block, info.voxel_size, mode, config, storage_options, info.shards)
    group = open_group(url, "r", storage_options)
    _check_store(url, group, storage_options)
    present = [name for name in (FRAGMENTS, NEURON_IDS, GROUP) if name in group]
    for name in present:
        if not _instance_node(group[name]):
            raise InstancesExistError(
                f"expected `{name}` in {redact_url(url)} to be emunet's instance results, got a Zarr node that the "
                f"instance stage did not write; move it away first (emunet never replaces data it did not write)"
            )
    if present and not (resume or overwrite):
        raise InstancesExistError(
            f"expected no instance results in {redact_url(url)}, got {present}; pass resume=True (--resume) "
            "to continue them or overwrite=True (--overwrite) to replace them"
        )
    if present and resume:
        meta = dict(group[GROUP].attrs.asdict()) if GROUP in group else {}
        stored, now = meta.get("config", {}), config.to_dict()
        diffs = [f"{k}: stored {stored.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS if stored.get(k) != now[k]]
        if list(meta.get("block_shape", block)) != list(block):
            diffs.append(f"block_shape: stored {meta.get('block_shape')}, now {list(block)}")
        if diffs:
            raise ValueError(
                f"expected to resume {redact_url(url)} with the config it was started with, got differences: "
                + "; ".join(diffs) + ". Use the same parameters, or pass --overwrite"
            )
    return job


def _mode_notes(job: InstanceJob) -> tuple[str, ...]:
    """Auto mode on a voxel size nobody stated (an input imported without --voxel-size: 1 nm
    as a placeholder) decides 2D against 3D on nothing: say so."""
    if job.config.mode != "auto":
        return ()
    meta = dict(job.group("r").attrs.asdict()).get("emunet") or {}
    if (meta.get("input") or {}).get("voxel_size_source") != "default":
        return ()
    return (f"the voxel size of {redact_url(job.url)} is a placeholder ({', '.join(f'{v:g}' for v in job.voxel_size)} nm: "
            f"its input stated none), so --mode auto chose {job.mode} on no evidence; pass --mode 2d for serial "
            "sections (z spacing ≥ 3× xy) or --mode 3d for isotropic data, or import the input with --voxel-size",)


def _labels_attrs(job: InstanceJob, threshold: float) -> dict[str, Any]:
    from pipeline.version import package_version

    return {
        "long_name": LONG_NAMES[NEURON_IDS],
        "image-label": {"version": "0.4", "source": {"image": f"../{PROBABILITY}"}, "colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]}]},
        "emunet": {
            "version": package_version(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stage": "instances", "threshold": threshold, "thresholds": list(job.config.thresholds),
            "mode": job.mode, "block_shape": list(job.block_shape), "config": job.config.to_dict(),
        },
    }


def _create(job: InstanceJob, overwrite: bool) -> None:
    from pipeline.output import zstd

    group = job.group("r+")
    if overwrite:
        for name in (FRAGMENTS, NEURON_IDS, GROUP):
            if name in group:
                del group[name]
        fs, root = fsspec_filesystem(job.url, job.storage_options)
        ledger = f"{root.rstrip('/')}/ledger/{GROUP}"
        if fs.exists(ledger):
            fs.rm(ledger, recursive=True)
    legacy = group.get("labels")  # an earlier version's instance labels (now `neuron_ids`), not the NGFF group
    if NEURON_IDS not in group and legacy is not None and hasattr(legacy, "dtype") and _instance_node(legacy):
        del group["labels"]
    for name, long_name in LONG_NAMES.items():
        if name not in group:  # each piece on its own: a run stopped half-way is completed
            group.create_array(name, shape=job.shape, chunks=job.chunks, shards=job.shards, dtype="uint64", fill_value=0,
                               dimension_names=AXES, compressors=zstd(3), attributes={"long_name": long_name, "emunet": OWN_MARK})
            if name == NEURON_IDS:  # relabel marks of an earlier array (say an earlier version's `labels`) mean nothing here
                for k in range(len(job.config.thresholds)):
                    job.ledger(f"relabel-t{k}", job.num_blocks).reset()
    if GROUP not in group:
        sub = group.create_group(GROUP)
        sub.attrs.update({"config": job.config.to_dict(), "mode": job.mode, "block_shape": list(job.block_shape),
                          "voxel_size_nm": list(job.voxel_size),
                          "layout": "graph/<block>.npz, seeds/<block>.npz, tree/t<k>/l<level>/<node>.npz"})


def _histogram(results: list[dict[str, Any]]) -> dict[str, int]:
    if not results:
        return {}
    ids = np.concatenate([r["segments"] for r in results])
    counts = np.concatenate([r["counts"] for r in results])
    if ids.size == 0:
        return {}
    uniq, inv = np.unique(ids, return_inverse=True)
    sizes = np.bincount(inv, weights=counts).astype(np.int64)
    bins = np.floor(np.log2(sizes)).astype(int)
    return {f"{2**b}-{2 ** (b + 1) - 1}": int(c) for b, c in zip(*np.unique(bins, return_counts=True), strict=True)}


def run_instances(url: str, config: InstanceConfig = InstanceConfig(), *, client: Any = None,
                  storage_options: Mapping[str, Any] | None = None, resume: bool = False,
                  overwrite: bool = False, log: Any = None) -> InstanceSummary:
    """Fragments → region graph → agglomeration tree → ``neuron_ids`` in the store at ``url``.

    ``client``: a `distributed.Client` (tasks run on its workers) or None (this process).
    """
    say = log or (lambda msg: None)
    job = prepare(url, config, storage_options=storage_options, resume=resume, overwrite=overwrite)
    notes = _mode_notes(job)
    for note in notes:
        say(f"warning: {note}")
    if not (resume and FRAGMENTS in job.group("r")):
        _check_map(job, client)
    _create(job, overwrite)
    n = job.num_blocks
    say(f"instances: {n} block(s) of {job.block_shape}, mode {job.mode}")
    clock = {"start": time.perf_counter()}

    def lap(name: str) -> None:
        now = time.perf_counter()
        clock[name], clock["start"] = now - clock["start"], now

    frag = run_stage(job, "fragments", [TaskSpec(fragments_task, (b,), b) for b in range(n)], client)
    lap("fragments")
    graph = run_stage(job, "graph", [TaskSpec(graph_task, (b,), b) for b in range(n)], client)
    lap("graph")
    tree = TreeGeometry(job.grid.grid_shape, config.tree_fanout)
    for level in range(tree.levels + 1):
        fn = leaf_task if level == 0 else node_task
        args = (lambda i: (i,)) if level == 0 else (lambda i, level=level: (level, i))
        run_stage(job, f"tree-l{level}", [TaskSpec(fn, args(i), i) for i in range(tree.count(level))], client)
    lap("tree")
    k = config.labels_index
    threshold = config.thresholds[k]
    labels = job.group("r+")[NEURON_IDS]
    if (dict(labels.attrs.asdict()).get("emunet") or {}).get("threshold", threshold) != threshold:
        for j in range(len(config.thresholds)):  # relabel marks hold only for the threshold `neuron_ids` has
            job.ledger(f"relabel-t{j}", n).reset()
    labels.attrs.update(_labels_attrs(job, threshold))  # first: a stopped relabel resumes at the same t
    relabel = run_stage(job, f"relabel-t{k}", [TaskSpec(relabel_task, (b, k), b) for b in range(n)], client)
    lap("relabel")
    fragments = int(sum(r["fragments"] for r in frag))
    histogram = _histogram(relabel) if len(relabel) == n else {}
    segments = {threshold: sum(histogram.values())} if histogram else {}  # distinct ids in labels
    return InstanceSummary(
        url=redact_url(url), mode=job.mode, block_shape=job.block_shape, num_blocks=n, tree_levels=tree.levels,
        thresholds=config.thresholds, labels_threshold=threshold, fragments=fragments,
        edges=int(sum(r["edges"] for r in graph)), segments=segments,
        size_histogram=histogram,
        seconds={k: v for k, v in clock.items() if k != "start"}, notes=notes,
    )
