"""What the flows share: cluster parameters, the transient-error retry rule, reading arrays
from any source (TIFF, HDF5, Zarr), metric rows, a background progress reporter, and the
Dask helpers (a local cluster for a block of work, one call on a GPU slot).

Nothing here imports Prefect at module level, so the CLI can use it without paying for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ArrayKind = Literal["image", "labels", "weights"]

# ISBI 2012 metrics shown in tables: (key, key of its threshold), lower is better.
METRICS: tuple[tuple[str, str], ...] = (
    ("pixel_error", "pixel_threshold"),
    ("rand_error", "rand_threshold"),
    ("info_error", "info_threshold"),
    ("rand_error_2012", "rand_2012_threshold"),
    ("warping_error", "warping_threshold"),
    ("warping_error_jain", "jain_threshold"),
)


class ClusterParams(BaseModel):
    """Where the Dask work runs: a running scheduler, or a local cluster started for the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler: str | None = Field(
        None, description="Address of a running Dask scheduler (tcp://host:8786); its workers declare --resources GPU=1."
    )
    workers: int | None = Field(
        None, ge=1, description="Local workers to start when no scheduler is given (default: one per GPU, 2 on a CPU)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ClusterParams:
        if self.scheduler is not None and self.workers is not None:
            raise ValueError(
                f"Expected a scheduler address or a number of local workers. Got both "
                f"(scheduler={self.scheduler!r}, workers={self.workers}) instead."
            )
        return self


# --------------------------------------------------------------------------- logging


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, else a plain module logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("emunet.flows")


# --------------------------------------------------------------------------- retries


def is_transient(exc: BaseException | None) -> bool:
    """True for errors a retry may cure: timeouts, dropped connections, other I/O hiccups.

    Deterministic I/O errors (missing files, permissions, an existing output) are not
    transient; neither is anything that is not an `OSError` (bad input, a bug).
    """
    from pipeline.execute import RetryPolicy

    if exc is None:
        return False
    return isinstance(exc, (TimeoutError, ConnectionError)) or RetryPolicy.is_transient(exc)


def failure_of(state: Any) -> BaseException | None:
    """The exception carried by a failed Prefect state (None if there is none)."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we only look at it
        return exc
    return None


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for stage tasks: retry only transient errors (see `is_transient`)."""
    exc = failure_of(state)
    retry = is_transient(exc)
    name = getattr(task, "name", "task")
    if exc is not None:
        kind, action = ("transient", "retrying") if retry else ("permanent", "not retrying")
        run_logger().warning(f"{name}: {kind} error ({type(exc).__name__}: {exc}); {action}")
    return retry


def flow_start() -> str:
    """Now, as the ``created`` time of emunet's stores is written (UTC, whole seconds): taken
    when a flow run begins, so that its retried tasks tell its own outputs from older ones."""
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def made_since(url: str, since: str | None) -> bool:
    """Whether the emunet store at ``url`` was created at or after ``since`` (`flow_start`).

    A retried task continues (or replaces) only what its own flow run made: an output that was
    there before the run is the user's to resume or overwrite, by their flags alone.
    """
    if since is None:
        return False
    from pipeline.output import open_group

    try:
        created = (dict(open_group(url, "r").attrs.asdict()).get("emunet") or {}).get("created")
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return False
    return isinstance(created, str) and created >= since


def attempt() -> int:
    """1 for the first run of the current task, 2 for its first retry, …"""
    from prefect.runtime import task_run

    count = task_run.run_count
    return int(count) if count else 1


# --------------------------------------------------------------------------- reading arrays


def is_file_source(url: str) -> bool:
    """True for a TIFF stack or an HDF5 dataset (``file.h5:/path``), False for Zarr."""
    from unetcore.io import HDF5_SUFFIXES, TIFF_SUFFIXES, split_hdf5

    path, _ = split_hdf5(str(url))
    return path.suffix.lower() in TIFF_SUFFIXES + HDF5_SUFFIXES


def looks_like_zarr(url: str) -> bool:
    """A remote URL, a path with ``.zarr`` in it, or a directory holding Zarr metadata."""
    from pipeline.volume import is_remote, local_path

    url = str(url)
    if is_remote(url) or ".zarr" in url:
        return True
    path = Path(local_path(url))
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def check_kind_of_data(url: str, kind: ArrayKind) -> None:
    """What emunet made as an output is no training image or label volume (a probability or
    weight map given as --images/--labels); a weight map must be one `emunet weights` finished
    (a stopped run's missing blocks read as weight 0 and drop out of the loss), never another
    emunet output (whose values would weight the loss)."""
    from pipeline.ownership import check_em_input, describe_kind, store_attrs_at, store_kind
    from pipeline.volume import redact_url, split_url
    from unetcore.io import emunet_tiff_kind, split_hdf5

    what, values = ("an EM image", "grey levels") if kind == "image" else ("labels (0 = membrane, > 0 = cell)", "labels")
    if is_file_source(url):
        path = split_hdf5(str(url))[0]
        made = emunet_tiff_kind(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if kind == "weights" and made not in (None, "weights"):
            raise ValueError(f"expected a weight map for --weights, got {url}, a {made} TIFF emunet wrote; pass the "
                             "output of `emunet weights`")
        if kind != "weights" and made in ("probability", "weights"):
            raise ValueError(f"expected {what}, got {url}, a {made} TIFF emunet wrote (its values are not {values}); "
                             "check the order of the arguments")
        return
    if kind != "weights":
        check_em_input(str(url), what=what, values=values)
        return
    store = split_url(str(url))[0]
    attrs = store_attrs_at(store)
    found = store_kind(attrs)
    if found not in (None, "weights", "import"):  # an import: say the user's own map, brought to Zarr
        raise ValueError(f"expected a weight map for --weights, got {redact_url(store)}, {describe_kind(found)}; pass the "
                         "output of `emunet weights`")
    if found == "weights" and attrs["emunet"].get("complete") is False:
        raise ValueError(
            f"expected a finished weight map, got {redact_url(store)}, whose `emunet weights` run stopped before every "
            "block was written (complete: false; the rest would weigh 0); run `emunet weights … --overwrite` again"
        )


def read_any(url: str, kind: ArrayKind = "image") -> np.ndarray:
    """A whole array into memory from a TIFF, an HDF5 dataset or a Zarr volume (3D)."""
    from unetcore.io import read_array

    check_kind_of_data(url, kind)
    if is_file_source(url):
        return read_array(url)
    from pipeline.volume import LABEL_DTYPES, SUPPORTED_DTYPES, open_volume

    volume = open_volume(str(url), dtypes=LABEL_DTYPES if kind == "labels" else SUPPORTED_DTYPES)
    return np.asarray(volume.array[...])


def shape_of(url: str, kind: ArrayKind = "image") -> tuple[int, ...]:
    """The shape of what `read_any` would read, without reading the data."""
    from unetcore.io import read_array, split_hdf5

    check_kind_of_data(url, kind)
    if is_file_source(url):
        path, dataset = split_hdf5(str(url))
        if not path.exists():
            raise FileNotFoundError(f"Expected an image file at {path}. Got no file instead.")
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
        return tuple(read_array(url).shape)  # HDF5: small enough to read (training data)
    from pipeline.volume import LABEL_DTYPES, SUPPORTED_DTYPES, open_volume

    return tuple(open_volume(str(url), dtypes=LABEL_DTYPES if kind == "labels" else SUPPORTED_DTYPES).shape)


def as_stack(array: np.ndarray) -> np.ndarray:
    """(y, x) → (1, y, x); a stack is returned unchanged."""
    return array[None] if array.ndim == 2 else array


# --------------------------------------------------------------------------- metrics


def isbi_scores(probability: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The ISBI 2012 metrics (`pipeline.metrics.evaluate_stack`), scalars only."""
    from pipeline.metrics.evaluate import evaluate_stack

    scores = evaluate_stack(as_stack(probability), as_stack(labels))
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def metric_rows(scores: Mapping[str, float]) -> list[dict[str, Any]]:
    """Rows of a table artifact: metric, value, threshold of the optimum."""
    return [
        {"metric": key, "value": round(float(scores[key]), 6), "threshold": scores.get(threshold)}
        for key, threshold in METRICS
        if key in scores
    ]


def metric_line(scores: Mapping[str, float]) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {scores[key]:.4g}" for key, _ in METRICS if key in scores)


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def every(seconds: float, report: Callable[[], None]) -> Iterator[None]:
    """Call ``report()`` every `seconds` in a daemon thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                report()
            except Exception:  # noqa: BLE001 - progress must never break the run
                pass

    thread = threading.Thread(target=loop, name="emunet-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- Dask


@contextlib.contextmanager
def quiet_dask(level: int = logging.WARNING) -> Iterator[None]:
    """Keep distributed's INFO chatter (workers starting, plugins) out of the run log."""
    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def scheduler_address(cluster: ClusterParams | None) -> Iterator[str | None]:
    """None (run in process), the given scheduler, or a local cluster started for the block."""
    if cluster is None or (cluster.scheduler is None and cluster.workers is None):
        yield None
        return
    if cluster.scheduler is not None:
        yield cluster.scheduler
        return
    from pipeline.cluster import ClusterConfig, local_cluster

    with quiet_dask():
        local, kind, _ = local_cluster(ClusterConfig(workers=cluster.workers))
    with local, quiet_dask():
        run_logger().info(f"started a {kind} Dask cluster of {cluster.workers} worker(s) at {local.scheduler_address}")
        yield local.scheduler_address


def on_gpu_worker(address: str, fn: Callable[..., Any], *args: Any, timeout_s: float = 60.0) -> Any:
    """``fn(*args)`` on one GPU slot of the cluster at `address` (``resources={"GPU": 1}``).

    Submitted on its own, never through a graph (dask#7036 drops annotations on fusion).
    """
    import uuid

    from distributed import Client

    from pipeline.cluster import wait_for_slots
    from pipeline.submit import SLOT

    with Client(address, timeout=timeout_s) as client:
        wait_for_slots(client, timeout_s)
        key = f"emunet-{getattr(fn, '__name__', 'call').replace('_', '-')}-{uuid.uuid4().hex[:8]}"
        future = client.submit(fn, *args, resources=SLOT, pure=False, key=key, retries=0)
        try:
            return future.result()
        finally:
            future.release()
