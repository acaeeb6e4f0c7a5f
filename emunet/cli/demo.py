"""`emunet demo`: the real pipeline end to end on the embedded default input, or on yours.

::

    synthetic EM (seed 20150518) ─► demo-output/input.zarr, ground-truth.zarr
      (or IN.zarr / IN.tif)             │
                                        ▼
    Prefect flow segment-volume: validate ─► plan ─► blocks on a local Dask cluster (2 workers)
                                 ─► ledger ─► ISBI metrics ─► artifacts
                                        │
                                        ▼
    demo-output/segmentation.zarr (OME-Zarr), overlay.png, report.json

The default input is generated from a fixed seed (embedded in the code, byte for byte
reproducible) with its ground truth; the model is the committed
`models/demo-synthetic.safetensors`, trained by `emunet train` (docs/models/demo-synthetic.md).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from emunet.cli.common import console, user_errors

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "demo-synthetic.safetensors"
DEMO_SEED = 20150518  # the U-Net paper's arXiv date
DEMO_SHAPE = (4, 384, 384)
DEMO_BLOCK = (1, 384, 384)  # 4 blocks: two for each of the 2 default workers
REPORT_KEYS = ("pixel_error", "rand_error", "info_error", "rand_error_2012", "warping_error")


def demo_input(shape: tuple[int, int, int] = DEMO_SHAPE, seed: int = DEMO_SEED):
    """The embedded default input: (images uint8, instance labels int32) of synthetic EM."""
    import numpy as np

    from unetcore.synthetic import synthetic_em_2d

    slices = [synthetic_em_2d(shape[1:], seed=seed + i) for i in range(shape[0])]
    return np.stack([s.image for s in slices]), np.stack([s.labels for s in slices])


def write_overlay(path: Path, image, prob, labels, instances=None) -> None:
    """Image | prediction overlay (membrane in magenta) [| ground truth] [| instances] for one slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = 2 + (labels is not None) + (instances is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.3))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input")
    rgb = np.repeat((image / 255.0)[..., None], 3, axis=2)
    membrane = 1.0 - prob
    rgb[..., 0] = np.clip(rgb[..., 0] * (1 - membrane) + membrane, 0, 1)
    rgb[..., 1] = rgb[..., 1] * (1 - membrane)
    rgb[..., 2] = np.clip(rgb[..., 2] * (1 - membrane) + membrane, 0, 1)
    axes[1].imshow(rgb)
    axes[1].set_title("prediction: membrane in magenta")
    if labels is not None:
        axes[2].imshow(labels > 0, cmap="gray")
        axes[2].set_title("ground truth (white = cell)")
    if instances is not None:  # one random colour per segment of `neuron_ids`
        ids, inverse = np.unique(instances, return_inverse=True)
        colours = np.random.default_rng(0).uniform(0.2, 1.0, (ids.size, 3))
        axes[-1].imshow(colours[inverse.reshape(instances.shape)])
        axes[-1].set_title(f"instances: {ids.size} segments (neuron_ids)")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_image(url: Path, array: Any, name: str = "image") -> str:
    """A (z, y, x) array as a one-level OME-Zarr image (array ``0``, one chunk per slice),
    replacing only an earlier demo's image (never data emunet did not write)."""
    from pipeline.output import AXES, DENSE, ome_attrs, ome_dataset, ome_multiscale, open_group, zstd
    from pipeline.ownership import check_output, remove_ours

    if check_output(str(url), overwrite=True, kind=f"demo-{name}").exists:
        remove_ours(str(url))
    group = open_group(str(url), "w")
    group.attrs.update({"emunet": {"kind": f"demo-{name}", "voxel_size_from": "default"}})  # ours from the start; 1 nm: a placeholder
    chunks = (1, *array.shape[1:])
    group.create_array("0", shape=array.shape, chunks=chunks, dtype=array.dtype, fill_value=0, dimension_names=AXES,
                       compressors=zstd(), config=DENSE)[...] = array  # fmt: skip
    group.attrs.update(ome_attrs([ome_multiscale(name, [ome_dataset("0", (1.0, 1.0, 1.0))])]))
    return str(url)


DEMO_MARK = ".emunet-demo"  # the file that makes a folder the demo's own
DEMO_FILES = frozenset({DEMO_MARK, "input.zarr", "ground-truth.zarr", "segmentation.zarr", "overlay.png", "report.json"})


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo's folder: new, empty, or one an earlier demo made (its mark).

    The demo writes only there and only its own files, so a folder of the user's data
    (say ``out/input.zarr`` holding their volume) is refused, never replaced.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"expected a folder for --out, got a file at {out}; choose another --out")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and DEMO_MARK not in entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise FileExistsError(
            f"expected a new or empty folder (or an earlier demo's) for --out, got {out} holding {shown}, which the "
            "demo did not write; choose another --out (the demo never writes into a folder of yours)"
        )
    # the staging folders of an import the demo made (of IN) and was killed in: the importer sweeps them
    foreign = [name for name in entries if name not in DEMO_FILES and not re.match(r"\.(input|ground-truth)\.zarr\.(partial|old)-", name)]
    if foreign:
        raise FileExistsError(
            f"expected only the demo's files in {out}, got also {', '.join(foreign[:5])}; move them away or "
            "choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text(json.dumps({"emunet": "demo output folder"}) + "\n")


def _inputs(input: str | None, ground_truth: str | None, out: Path) -> tuple[str, str | None, str, tuple | None]:
    """(input URL, ground-truth URL, description, block shape) of what the demo segments."""
    from flows._common import is_file_source

    if input is None:
        images, labels = demo_input()
        source = f"synthetic EM, seed {DEMO_SEED}, {images.shape}"
        return write_image(out / "input.zarr", images), write_image(out / "ground-truth.zarr", labels, "labels"), source, DEMO_BLOCK
    if is_file_source(input):  # a TIFF stack or HDF5 dataset: imported into OME-Zarr first
        from pipeline.importer import import_volume

        import_volume(input, out / "input.zarr", overwrite=True)
        return str(out / "input.zarr"), ground_truth, input, None
    return input, ground_truth, input, None


def demo(
    input: Annotated[Optional[str], typer.Argument(help="A Zarr volume (or TIFF stack) to segment instead of the embedded input.")] = None,
    ground_truth: Annotated[Optional[str], typer.Option(help="Ground truth for INPUT (Zarr or TIFF; 0 = membrane, >0 = cell).")] = None,
    model: Annotated[Path, typer.Option(help="Checkpoint (.safetensors).")] = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-output"),
    workers: Annotated[int, typer.Option(min=1, help="Local Dask workers.")] = 2,
) -> None:
    """Run the segment-volume flow on the embedded default input (or INPUT): OME-Zarr output,
    ISBI metrics, a PNG overlay and how to open the result."""
    with user_errors():
        from emunet.cli.flow_commands import import_prefect, run_flow

        t0 = time.perf_counter()
        if input is None and ground_truth is not None:
            raise ValueError(f"expected --ground-truth only with an INPUT to segment, got {ground_truth!r} without one; "
                             "the embedded input brings its own ground truth: pass IN --ground-truth GT, or neither")
        claim_folder(out)
        import_prefect()
        input_url, gt_url, source, block = _inputs(input, ground_truth, out)
        output_url = str(out / "segmentation.zarr")

        from flows._common import ClusterParams, as_stack, read_any
        from flows.segment_volume import SegmentVolumeParams, segment_volume, xarray_snippet

        params = SegmentVolumeParams(
            input_url=input_url, output_url=output_url, checkpoint=str(model), block_shape=block, blocks_per_task=1,
            cluster=ClusterParams(workers=workers), overwrite=True, ground_truth_url=gt_url,
        )  # fmt: skip
        summary = run_flow(segment_volume, params)
        report = _report(summary, source, model, output_url, out)
        report["segments"] = _instances(output_url)
        _overlay(out / "overlay.png", input_url, output_url, as_stack(read_any(gt_url, "labels"))[0] if gt_url else None)
        report["total_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _print(report, out, xarray_snippet(output_url, params.dtype))


def _report(summary: dict[str, Any], source: str, model: Path, output_url: str, out: Path) -> dict[str, Any]:
    result = summary["result"]
    report: dict[str, Any] = {
        "input": source,
        "model": str(model),
        "output": output_url,
        "blocks": f"{result['computed']} of {result['total_blocks']} ({result['slots']} workers, {result['cluster']})",
        "seconds_segment": round(result["seconds"], 2),
        "megavoxels_per_second": round(result["voxels_per_second"] / 1e6, 3),
    }
    if summary.get("metrics"):
        report.update({k: round(float(summary["metrics"][k]), 6) for k in REPORT_KEYS})
    report["overlay"] = str(out / "overlay.png")
    return report


def _overlay(path: Path, input_url: str, output_url: str, labels: Any) -> None:
    """The overlay of slice 0, read back from the input and output Zarr."""
    from pipeline.geometry import Roi
    from pipeline.instances.layout import NEURON_IDS
    from pipeline.output import open_output
    from pipeline.volume import open_volume

    volume = open_volume(input_url)
    roi = Roi((0, 0, 0), (1, *volume.shape[1:]))
    output = open_output(output_url, mode="r")
    instances = output.group[NEURON_IDS][0] if NEURON_IDS in output.group else None
    write_overlay(path, volume.read(roi)[0], output.read(roi)[0], labels, instances)


def _instances(output_url: str) -> int | str:
    """Neuron instances (`neuron_ids`) of the output, in this process (`emunet agglomerate`)."""
    from pipeline.instances import InstanceConfig, run_instances

    try:  # the demo's slices are independent images: 2D
        summary = run_instances(output_url, InstanceConfig(mode="2d"), overwrite=True)
    except ValueError as exc:  # e.g. a model that finds no cells: the demo still reports the rest
        return f"skipped: {exc}"
    return sum(summary.segments.values())


def _print(report: dict[str, Any], out: Path, snippet: str) -> None:
    from rich.table import Table

    table = Table(title="emunet demo: segment-volume flow", show_header=False)
    for key, value in report.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"Open the result in Python:\n\n{snippet}\n", highlight=False, markup=False)
    console.print(f"Files: {out}/segmentation.zarr, {out}/overlay.png, {out}/report.json", highlight=False, markup=False,
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
