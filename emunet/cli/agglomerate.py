"""`emunet agglomerate OUT.zarr`: neuron instances (``neuron_ids``) from a segment output's
``probability``, blockwise on Dask; and the segmentation scoring `emunet evaluate` uses for
label volumes (`score_segmentation`).

Heavy libraries are imported inside the command so ``emunet --help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from emunet.cli.common import console, echo_json, user_errors


class Mode(str, Enum):
    auto = "auto"
    d2 = "2d"
    d3 = "3d"


class Method(str, Enum):
    watershed = "watershed"
    components = "components"


class Score(str, Enum):
    mean = "mean"
    quantile = "quantile"


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected {what} as comma-separated numbers (e.g. 0.3,0.5,0.7), got {text!r}") from None


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ValueError(f"expected --block-shape as three integers z,y,x (e.g. 8,256,256), got {text!r}")
    return shape  # type: ignore[return-value]


def print_summary(summary: Any) -> None:
    from rich.table import Table

    table = Table(title=f"Instances in {summary.url} (labels at threshold {summary.labels_threshold})")
    table.add_column("Threshold", justify="right")
    table.add_column("Segments", justify="right")
    for t in summary.thresholds:
        table.add_row(repr(t), str(summary.segments.get(t, "-")))
    table.caption = ("segments are counted in `neuron_ids` (other thresholds: --resume --labels-threshold T); "
                     f"{summary.num_blocks} block(s) of {summary.block_shape}, mode {summary.mode}, "
                     + (f"{summary.fragments} fragments, {summary.edges} edges" if summary.fragments else
                        "fragments and edges of the earlier run (resumed)") + f", tree of {summary.tree_levels} level(s)")
    Console().print(table)


def instances_after_segment(output: str, config: Any, *, log: Any = None) -> dict[str, Any]:
    """`emunet segment --instances` without Prefect: the instance stage with its defaults on the
    workers `config` (a `SegmentConfig`) names; resumes with ``--resume``. The summary dict."""
    from pipeline.instances import InstanceConfig, run_instances
    from pipeline.instances.runner import instance_client

    workers = config.workers if config.workers is not None else 2
    with instance_client(workers, config.scheduler) as client:
        summary = run_instances(output, InstanceConfig(), client=client, resume=config.resume, log=log)
    if log is not None:
        print_summary(summary)
    return summary.to_dict()


def register(app: typer.Typer) -> None:
    """Add the ``agglomerate`` command to ``app``."""

    @app.command("agglomerate")
    def agglomerate(
        store: Annotated[str, typer.Argument(metavar="OUT.zarr", help="Output of `emunet segment` (its `probability` is read; `fragments`, `neuron_ids` are written).")],
        thresholds: Annotated[str, typer.Option(help="Merge thresholds on the edge score (boundary probability), comma-separated; all computed in one pass.")] = "0.6,0.7,0.75,0.8",
        labels_threshold: Annotated[float | None, typer.Option(help="Which threshold fills `neuron_ids` (default: the middle one). With --resume only relabels.")] = None,
        mode: Annotated[Mode, typer.Option(help="Fragments per 2D slice, in 3D, or auto (2d when z spacing ≥ 3× xy).")] = Mode.auto,
        method: Annotated[Method, typer.Option(help="Seeded watershed fragments, or connected components of p > --seed-threshold.")] = Method.watershed,
        seed_threshold: Annotated[float, typer.Option(help="Cell mask p > this; seeds from its distance transform.")] = 0.5,
        seed_distance: Annotated[int, typer.Option(help="Minimum distance between seeds (voxels).")] = 3,
        min_size: Annotated[int, typer.Option(help="Fragments smaller than this (voxels) are flooded by their neighbours.")] = 20,
        context: Annotated[int, typer.Option(help="Voxels read beyond each block (xy, and z in 3D).")] = 16,
        score: Annotated[Score, typer.Option(help="Edge score: mean or quantile of 1 - p along the contact.")] = Score.mean,
        block_shape: Annotated[str | None, typer.Option(help="Block shape z,y,x (multiples of the probability chunks).")] = None,
        workers: Annotated[int, typer.Option(help="Local Dask workers (0 = run in this process).")] = 2,
        scheduler: Annotated[str | None, typer.Option(help="Address of a running Dask scheduler (instead of local workers).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run (same parameters).")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace earlier instance results.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    ) -> None:
        """Neuron instances: watershed fragments, region graph, agglomeration tree, `neuron_ids`."""
        with user_errors():
            from pipeline.instances import InstanceConfig, run_instances
            from pipeline.instances.runner import instance_client

            config = InstanceConfig(
                method=method.value, mode=mode.value, seed_threshold=seed_threshold, seed_distance=seed_distance,
                min_size=min_size, context=context, block_shape=parse_shape(block_shape),
                thresholds=parse_floats(thresholds, "--thresholds"), score=score.value, labels_threshold=labels_threshold,
            )
            if workers < 0:
                raise ValueError(f"expected --workers ≥ 0, got {workers}")
            with instance_client(workers, scheduler) as client:
                summary = run_instances(store, config, client=client, resume=resume, overwrite=overwrite,
                                        log=lambda m: console.print(m, highlight=False))
            if as_json:
                echo_json(summary.to_dict())
            else:
                print_summary(summary)


# --------------------------------------------------------------------------- evaluate SEG GT


def label_source(spec: str, what: str) -> Any:
    """A Zarr label array by address (an emunet output store means its ``neuron_ids``), or a numpy array."""
    from pathlib import Path

    from emunet.cli.evaluate import _split_zarr, image_level0, load_array
    from pipeline.instances.layout import NEURON_IDS
    from pipeline.instances.volume_metrics import LabelSource

    store, inner = _split_zarr(spec)
    if inner is None and Path(store).suffix.lower() == ".zarr" and (Path(store) / "zarr.json").is_file():
        import zarr

        node = zarr.open(store=store, mode="r")
        if isinstance(node, zarr.Group):
            from pipeline.ownership import store_kind

            # an emunet output's neuron ids; a group's `labels`; an OME image (not a segment output's probability)
            image = image_level0(node) if store_kind(dict(node.attrs.asdict())) not in ("segment", "weights") else None
            for name in (NEURON_IDS, "labels", image):
                if name is not None and isinstance(node.get(name), zarr.Array):
                    return LabelSource(store, name)
            raise ValueError(f"expected {what} to be a label array or an emunet output with `{NEURON_IDS}`, got a group "
                             f"with {sorted(node.keys())}; name the array as {store}:path/in/group")
        return LabelSource(store, "")
    if inner is not None:
        return LabelSource(store, inner)
    return load_array(spec, what)


def voxel_size_of(source: Any) -> tuple[float, ...] | None:
    """Voxel size recorded with a Zarr label array (its group's emunet attrs), if any."""
    from pipeline.instances.volume_metrics import LabelSource

    if not isinstance(source, LabelSource):
        return None
    import zarr

    parent = source.path.rsplit("/", 1)[0] if "/" in source.path else ""
    try:
        group = zarr.open_group(store=source.store, path=parent, mode="r")
    except Exception:
        return None
    size = (dict(group.attrs.asdict()).get("emunet") or {}).get("voxel_size_nm")
    return tuple(float(v) for v in size) if size else None


def score_segmentation(pred: str, gt: str, *, as_json: bool, workers: int = 0) -> None:
    """Score a label volume as a segmentation: VI, adapted Rand, CREMI, ISBI slice scores."""
    from pipeline.instances.volume_metrics import isbi_labels, volume_scores

    seg_src, gt_src = label_source(pred, "SEG"), label_source(gt, "GT")
    seg_vs, gt_vs = voxel_size_of(seg_src), voxel_size_of(gt_src)
    if seg_vs and gt_vs and seg_vs != gt_vs:
        raise ValueError(f"expected SEG and GT with the same voxel size, got SEG {seg_vs} nm and GT {gt_vs} nm; "
                         "resample one of them first")
    from pipeline.instances.runner import instance_client

    with instance_client(workers, None) as client:
        result = {**volume_scores(seg_src, gt_src, client=client), "isbi": isbi_labels(seg_src, gt_src, client=client)}
    if as_json:
        echo_json({"seg": pred, "gt": gt, **result})
        return
    from rich.table import Table

    table = Table(title=f"Segmentation scores: {pred} vs {gt}")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for label, key in (("VI split H(seg|gt), bits", "vi_split"), ("VI merge H(gt|seg), bits", "vi_merge"),
                       ("Adapted Rand error", "adapted_rand_error"), ("CREMI score", "cremi_score")):
        table.add_row(label, f"{result[key]:.6g}")
    for label, key in (("ISBI V_rand error (per slice)", "rand_error"), ("ISBI V_info error (per slice)", "info_error"),
                       ("ISBI Rand error 2012", "rand_error_2012")):
        table.add_row(label, f"{result['isbi'][key]:.6g}")
    table.caption = (f"{result['voxels']} GT-labelled voxels, {result['gt_labels']} GT labels, {result['seg_labels']} "
                     f"segments; {result['isbi']['n_slices']} slice(s); GT label 0 ignored"
                     + ("; GT has one label (a binary mask?): only the ISBI rows, which label GT > 0 per slice, "
                        "are meaningful" if result["gt_labels"] == 1 else ""))
    Console().print(table)


LABEL_DTYPES = ("uint32", "uint64", "int32", "int64")


def is_label_volume(spec: str) -> bool:
    """True for a Zarr label array (uint32/uint64/int32/int64) or an output store with ``neuron_ids``."""
    from emunet.cli.evaluate import _split_zarr

    store, inner = _split_zarr(spec)
    if not store.lower().endswith(".zarr"):
        return False
    try:
        source = label_source(spec, "SEG")
        return str(source.open().dtype) in LABEL_DTYPES if hasattr(source, "open") else False
    except (ValueError, FileNotFoundError, KeyError):
        return False
