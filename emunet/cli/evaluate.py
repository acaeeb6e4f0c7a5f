"""`emunet evaluate PRED GT`: the ISBI 2012 challenge metrics of a proposal stack.

PRED (cell probability in [0, 1], uint8/uint16 scaled, or a binary map) and GT (0 =
membrane, > 0 = cell) are TIFF stacks (``.tif``/``.tiff``) or Zarr arrays (``path.zarr``
or ``store.zarr:path/in/group``); a 2D image is one slice. numpy, tifffile and zarr are
imported inside the command so ``emunet --help`` stays fast.
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any

import typer

from emunet.cli.common import console, echo_json, user_errors

TIFF_SUFFIXES = (".tif", ".tiff")

_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("Pixel error", "pixel_error", "pixel_threshold"),
    ("Rand error (V_rand, thinned)", "rand_error", "rand_threshold"),
    ("Information error (V_info, thinned)", "info_error", "info_threshold"),
    ("Rand error 2012 (no thinning)", "rand_error_2012", "rand_2012_threshold"),
    ("Warping error (splits + merges)", "warping_error", "warping_threshold"),
    ("Warping error (Jain, th = 0.5)", "warping_error_jain", "jain_threshold"),
)


def _split_zarr(spec: str) -> tuple[str, str | None]:
    """``'a.zarr:grp/arr'`` -> ``('a.zarr', 'grp/arr')``; ``'a.zarr'`` -> ``('a.zarr', None)``."""
    marker = spec.rfind(".zarr:")
    if marker >= 0:
        cut = marker + len(".zarr")
        return spec[:cut], spec[cut + 1 :] or None
    return spec, None


def image_level0(group: Any) -> str | None:
    """The full-resolution array of an OME-Zarr image group (what `emunet import` writes), if any."""
    from pipeline.ome import multiscales_of, ome_level
    from pipeline.volume_errors import NotAZarrError

    try:
        multiscales = multiscales_of(dict(group.attrs.asdict()))
        path = ome_level(multiscales[0], 0)[0] if multiscales else None
    except (NotAZarrError, ValueError):
        return None
    return path if path is not None and path in group else None


def refuse_output_as_gt(spec: str) -> None:
    """Ground truth that is one of emunet's outputs (a probability or weight map, synthetic
    images): the arguments were swapped or mixed up, and the scores would still print."""
    from pathlib import Path

    store, _ = _split_zarr(spec)
    if Path(store).suffix.lower() in TIFF_SUFFIXES:
        from unetcore.io import emunet_tiff_kind

        kind = emunet_tiff_kind(store)  # None for a missing file: the reader says so
        made = f"a {kind} TIFF emunet wrote" if kind in ("probability", "weights", "synthetic-image") else None
    else:
        from pipeline.ownership import describe_kind, store_attrs_at, store_kind

        found = store_kind(store_attrs_at(store))
        made = describe_kind(found) if found in ("segment", "weights") else None
    if made:
        raise ValueError(f"expected ground truth labels as GT, got {spec}, {made}; check the order of the arguments "
                         "(PRED first, then GT)")


def load_array(spec: str, what: str) -> Any:
    """Read a TIFF file or a Zarr array into a numpy array (user-facing errors)."""
    from pathlib import Path

    import numpy as np

    store, inner = _split_zarr(spec)
    path = Path(store)
    if inner is None and path.suffix.lower() in TIFF_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"expected {what} to be an existing TIFF file, got {spec!r} (not found)")
        from unetcore.io import read_tiff

        return read_tiff(path)
    if inner is not None or path.suffix.lower() == ".zarr" or (path / "zarr.json").is_file() or (path / ".zarray").is_file():
        if not path.exists():
            raise FileNotFoundError(f"expected {what} to be an existing Zarr store, got {store!r} (not found)")
        import zarr

        where = f"{store}:{inner}" if inner else store
        try:
            node = zarr.open(store=str(path), path=inner or "", mode="r")
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise ValueError(f"expected {what} to name a Zarr array, got {where!r} ({exc})") from None
        if isinstance(node, zarr.Group):  # the output group of `emunet segment`, or an OME-Zarr image
            arrays = sorted(str(k) for k in node.array_keys())
            if "probability" in arrays:
                node = node["probability"]  # an emunet output: its probability map
                _warn_if_unfinished(str(path), what)
            elif image_level0(node) is not None:
                node = node[image_level0(node)]  # e.g. labels imported with `emunet import`
            else:
                raise ValueError(
                    f"expected {what} to name a Zarr array, got the group {where!r} holding arrays {arrays[:10]}; "
                    f"name one as {store}:{(inner + '/') if inner else ''}NAME"
                )
        return np.asarray(node[...])
    raise ValueError(
        f"expected {what} as a .tif/.tiff file or a Zarr array (path.zarr or store.zarr:path/in/group), got {spec!r}"
    )


def _warn_if_unfinished(store: str, what: str) -> None:
    """An emunet output whose ledger says blocks are missing: its map holds zeros there."""
    from pipeline.ledger import Ledger

    try:
        summary = Ledger.open(store).summary()
    except (ValueError, KeyError, FileNotFoundError):  # not a segment output with a plan: nothing to say
        return
    if not summary.complete:
        warnings.warn(
            f"{what} {store} is an unfinished emunet output ({summary.done} of {summary.total} blocks done; the others "
            "read as 0 = membrane), so these scores are not the model's; finish it with `emunet segment … --resume` "
            f"(`emunet status {store}` shows what is missing)",
            UserWarning,
            stacklevel=2,
        )


def _jsonable(obj: Any) -> Any:
    """Replace NaN/inf by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _print_table(result: dict[str, Any], pred: str, gt: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ISBI 2012 metrics: {pred} vs {gt}")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column("Threshold", justify="right")
    for label, key, th_key in _ROWS:
        th = result.get(th_key) if th_key else None
        table.add_row(label, f"{result[key]:.6g}", "" if th is None else f"{th:.6g}")
    table.caption = (
        f"{result['n_slices']} slice(s) of {result['height']}×{result['width']}; "
        f"V_rand = {result['v_rand']:.6g}, V_info = {result['v_info']:.6g}; "
        f"splits = {result['warping_splits']}, merges = {result['warping_merges']}"
        + ("; binary proposal" if result["binary_proposal"] else "")
    )
    console = Console()
    console.print(table)
    curves = result.get("curves")
    if curves:
        sweep = Table(title="Errors per threshold")
        sweep.add_column("Threshold", justify="right")
        columns = (("pixel", "pixel_error"), ("V_rand", "rand_error"), ("V_info", "info_error"),
                   ("Rand 2012", "rand_error_2012"), ("warping", "warping_error"), ("Jain", "warping_error_jain"))
        for title, _ in columns:
            sweep.add_column(title, justify="right")
        for k, th in enumerate(curves["pixel_error"]["thresholds"]):
            cells = []
            for _, name in columns:
                values = curves[name]["values"]
                cells.append(f"{values[k]:.4g}" if k < len(values) else "")
            sweep.add_row(f"{th:.6g}", *cells)
        console.print(sweep)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command("evaluate")
    def evaluate(
        pred: Annotated[
            str,
            typer.Argument(metavar="PRED", help="Proposal: cell probability (float in [0, 1], uint8, uint16 or binary); "
                                ".tif/.tiff or Zarr (path.zarr or store.zarr:path/in/group)."),
        ],
        gt: Annotated[str, typer.Argument(metavar="GT", help="Ground truth, 0 = membrane, > 0 = cell; same formats as PRED.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
        curves: Annotated[bool, typer.Option("--curves", help="Also report the error at every threshold.")] = False,
        segmentation: Annotated[bool, typer.Option("--segmentation", help="Score PRED as a label volume (VI, adapted Rand, "
                                "CREMI, ISBI per slice), read blockwise; automatic for uint32/uint64/int32/int64 "
                                "arrays and for an `emunet agglomerate` output.")] = False,
    ) -> None:
        """ISBI 2012 metrics (pixel, V_rand, V_info, 2012 Rand, warping) of PRED against GT."""
        with user_errors():
            from emunet.cli.agglomerate import is_label_volume, score_segmentation

            if segmentation or is_label_volume(pred):
                score_segmentation(pred, gt, as_json=as_json)
                return
            from pipeline.metrics.evaluate import evaluate_stack

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                refuse_output_as_gt(gt)
                pred_arr = load_array(pred, "PRED")
                gt_arr = load_array(gt, "GT")
                result = evaluate_stack(pred_arr, gt_arr, curves=curves)
            for w in caught:
                console.print(f"[bold yellow]warning[/]: {w.message}", highlight=False, soft_wrap=True)
            if as_json:
                echo_json(_jsonable({"pred": pred, "gt": gt, **result}))
            else:
                _print_table(result, pred, gt)
