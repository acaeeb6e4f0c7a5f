"""The flow path of `emunet segment`, `emunet weights` (Zarr labels) and `emunet train`.

Each command builds the flow's typed parameters and runs the Prefect flow from `flows/`:
with a configured Prefect API (``PREFECT_API_URL``) the run is recorded there; without one
Prefect starts a temporary local server (ephemeral mode), so a one-off run gets the same
stages, retries, run log and artifacts as a scheduled deployment. Prefect is imported only
here, inside the functions, so ``emunet --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from emunet.cli.common import console, echo_json, print_failures

STARTUP_TIMEOUT_S = 180  # seconds a temporary Prefect server may take to start


def import_prefect() -> None:
    """Import Prefect for a one-off run; call before importing a flow module.

    * No telemetry from the temporary server: on a new machine it races the database
      migration on SQLite ("database is locked" tracebacks in the output). The user's own
      setting wins (``PREFECT_SERVER_ANALYTICS_ENABLED``).
    * Prefect configures its console log handler when it is imported, with the stderr it
      sees then. Under a caller that swaps ``sys.stderr`` for a while (Typer's CliRunner in
      tests), that stream is closed afterwards and every later log line fails; so the
      import sees the process's real stderr.
    * Dask's `distributed` first: imported after Prefect it would send its INFO chatter
      (workers starting, clients closing) through Prefect's console handler; imported
      before, it keeps its own handler, which local clusters silence below WARNING.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "prefect.main" not in sys.modules:
        swapped, sys.stderr = sys.stderr, sys.__stderr__ or sys.stderr
        try:
            import distributed  # noqa: F401 - its logging before Prefect's
            import prefect.main  # noqa: F401 - configures logging
        finally:
            sys.stderr = swapped
    quiet_user_error_tracebacks()


class _UserErrorFormatter(logging.Formatter):
    """Formats like `inner`, without the traceback of a user error (bad input)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        from emunet.cli.common import USER_ERRORS

        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return self.inner.format(record)


def quiet_user_error_tracebacks() -> None:
    """On the console, a flow that stops on bad input logs one line, not a traceback.

    The command prints the error once more, as its last words; the run's log in the
    Prefect API keeps the full record (its handler sees the record first, unchanged).
    Tracebacks of anything else (a bug, a lost worker) are printed as before.
    """
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler" and not isinstance(handler.formatter, _UserErrorFormatter):
            handler.setFormatter(_UserErrorFormatter(handler.formatter))


@contextlib.contextmanager
def prefect_defaults() -> Iterator[None]:
    """A start-up limit of 180 s for a temporary server (unless the user set one).

    Ephemeral mode (no ``PREFECT_API_URL``) starts a temporary local server; its first
    start on a new machine migrates the database, which can take longer than Prefect's
    20 s default on two busy cores.
    """
    import_prefect()
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    limit = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), STARTUP_TIMEOUT_S)
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: limit}):
        yield


def start_temporary_server() -> None:
    """Without a configured Prefect API, start Prefect's temporary server now, ignoring Ctrl-C.

    Prefect starts it on first use, as a child in this process group: Ctrl-C in the terminal
    killed it first, and the flow then spent minutes retrying against a dead API. Started
    here (`children_ignore_sigint`), it lives until this process stops it on exit, and Ctrl-C
    reaches only the command, which stops the run and says how to resume.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value() or not sys.platform.startswith("linux"):
        return
    import subprocess

    from prefect.server.api.server import SubprocessASGIServer

    popen = subprocess.Popen

    def detached(*args: Any, **kwargs: Any) -> Any:
        # Its own session: the terminal's Ctrl-C does not reach it (uvicorn would catch an
        # ignored SIGINT anew). PR_SET_PDEATHSIG: it still ends when this process dies, even
        # by SIGKILL, so no server is ever left behind.
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("preexec_fn", _die_with_parent)
        return popen(*args, **kwargs)

    subprocess.Popen = detached  # type: ignore[misc]  # for the one Popen of start()
    try:
        SubprocessASGIServer().start(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the parent dies (Linux ``prctl``)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_flow(flow_fn: Any, params: Any) -> Any:
    """``flow_fn(params)`` under `prefect_defaults`; the flow's return value."""
    with prefect_defaults():
        start_temporary_server()
        return flow_fn(params)


def segment_with_flow(
    input_url: str, output_url: str, checkpoint: Any, config: Any, *, ground_truth: str | None = None, as_json: bool = False,
    instances: bool = False,
) -> int:
    """`emunet segment` as the `segment-volume` flow; the exit code (0 done, 1 failed blocks).

    `config` is the `pipeline.segment.SegmentConfig` the command built from its options.
    With `instances`, a successful run is followed by the `segment-instances` flow on the
    same workers (its summary under ``"instances"`` with ``--json``).
    """
    import_prefect()
    from flows.segment_volume import BlocksFailedError, SegmentVolumeParams, segment_volume
    from pipeline.submit import SchedulerLostError

    params = SegmentVolumeParams.from_segment_config(input_url, output_url, str(checkpoint), config, ground_truth_url=ground_truth)
    try:
        summary = run_flow(segment_volume, params)
    except BlocksFailedError as exc:
        if as_json and exc.result is not None:
            echo_json(exc.result)
        elif exc.result is not None:
            _print_result(exc.result)
            print_failures(exc.result["failed"])
        console.print(f"[bold red]failed blocks[/]: {exc}", highlight=False, soft_wrap=True)
        return 1
    except SchedulerLostError:
        raise  # lost mid-run after the flow's retries: exit 3 in `emunet segment`
    except (ConnectionError, TimeoutError) as exc:  # no scheduler / no GPU workers: a usage error
        raise ValueError(str(exc)) from None
    found = None
    if instances:
        from flows._common import ClusterParams
        from flows.segment_instances import SegmentInstancesParams, segment_instances

        cluster = ClusterParams(scheduler=config.scheduler, workers=None if config.scheduler else config.workers)
        found = run_flow(segment_instances, SegmentInstancesParams(output_url=output_url, cluster=cluster, resume=config.resume))
    if as_json:
        extra = {"instances": found["summary"]} if instances else {}
        echo_json({**summary["result"], "metrics": summary["metrics"], **extra})  # SegmentResult's keys, as without --flow
        return 0
    _print_result(summary["result"])
    if summary.get("metrics"):
        from flows._common import metric_line

        console.print(f"metrics: {metric_line(summary['metrics'])}", highlight=False)
    if found is not None:
        from emunet.cli.agglomerate import print_summary
        from pipeline.instances.driver import InstanceSummary

        print_summary(InstanceSummary(**_summary_fields(found["summary"])))
    return 0


def _summary_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """An `InstanceSummary`'s fields from its ``to_dict()`` (threshold keys back to floats)."""
    fields = dict(summary)
    fields["segments"] = {float(k): v for k, v in summary.get("segments", {}).items()}
    fields["thresholds"] = tuple(summary["thresholds"])
    fields["block_shape"] = tuple(summary["block_shape"])
    return fields


def _print_result(result: dict[str, Any]) -> None:
    from pipeline.execute import BlockFailure
    from pipeline.segment import SegmentResult, describe_result

    known = set(SegmentResult.__dataclass_fields__)
    data = {k: v for k, v in result.items() if k in known}
    data["failed"] = [BlockFailure.from_dict(f) for f in data.get("failed", [])]
    console.print(describe_result(SegmentResult(**data)), highlight=False, markup=False)
    from emunet.cli.common import print_warnings

    print_warnings(data.get("warnings") or [])


def weights_with_flow(labels_url: str, output_url: str, *, flow: bool = True, **options: Any) -> dict[str, Any]:
    """`emunet weights` on Zarr labels: the `precompute-weights` flow (or the bare pipeline)."""
    if not flow:
        import time

        from pipeline.weights import compute_weight_maps
        from unetcore.weightmap import WeightMapConfig

        config = WeightMapConfig(**{k: options.pop(k) for k in ("w0", "sigma", "class_balance", "cutoff") if k in options})
        start = time.perf_counter()
        plan = compute_weight_maps(labels_url, output_url, config, **options)
        return {"output_url": output_url, "num_blocks": plan.num_blocks, "block_shape": list(plan.block_shape),
                "halo": list(plan.halo), "seconds": time.perf_counter() - start}  # fmt: skip
    import_prefect()
    from flows.precompute_weights import PrecomputeWeightsParams, precompute_weights

    return run_flow(precompute_weights, PrecomputeWeightsParams(labels_url=labels_url, output_url=output_url, **options))


def train_with_flow(spec: Any, *, scheduler: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """`emunet train` as the `train-unet` flow (on a Dask GPU worker with scheduler/workers)."""
    import_prefect()
    from flows._common import ClusterParams
    from flows.train_unet import TrainUNetParams, train_unet

    cluster = ClusterParams(scheduler=scheduler, workers=workers) if scheduler or workers else None
    return run_flow(train_unet, TrainUNetParams(**spec.model_dump(), cluster=cluster))
