"""The resident state of a Dask worker, and the block task that uses it.

`ModelPlugin` is registered once per run (``client.register_plugin``). On every worker it
checks the checkpoint's SHA-256 against the hash the client expects, loads the model once,
keeps it and its `TilePredictor` on the worker's device, and caches what tasks open
repeatedly (plans, input and output arrays, ledgers). Tasks then carry only block ids, URLs
and the plan as a small dict (`GroupJob`); they never carry arrays or models::

    client ── GroupJob(block ids, plan dict, plugin name) ──► worker
                                                             ├─ plugin: model, predictor (loaded once)
                                                             ├─ plugin cache: plan, zarr arrays, ledger
                                                             └─ run_group: read → compute → write

A long-lived cluster serves many runs, each with its own checkpoint or settings: a plugin
left registered would keep its model on every worker (and load it on every worker that
joins) for the life of the cluster. Runs therefore *hold* their model (`hold_model`) and
*release* it at the end (`release_model`). The scheduler keeps who holds which plugin; a
plugin nobody holds is idle, and only the `KEEP_IDLE_MODELS` most recently used idle ones
stay registered (a rerun of the same model starts warm); older ones are unregistered, which
tears them down on every worker. Runs of the same spec share one plugin, so a run ending
never pulls the model from under a concurrent run. Holds of clients that are gone (killed,
disconnected) are dropped at the next hold or release.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.execute import BlockOps, GroupReport, RetryPolicy, run_group

logger = logging.getLogger(__name__)

LOADS = 0  # models this process has loaded (read by the tests and reported per group)
PLUGIN_PREFIX = "emunet-model-"
KEEP_IDLE_MODELS = 1  # plugins no run holds that stay registered (most recently used first)


class CheckpointMismatchError(ValueError):
    """A worker sees a checkpoint file whose SHA-256 differs from the one the client expects."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load, how to check it, and how to run it (small and picklable)."""

    checkpoint: str  # path every worker can read (a shared file system)
    sha256: str  # expected SHA-256 of the checkpoint file (unetcore.checkpoint.file_sha256)
    predict: dict[str, Any] = field(default_factory=dict)  # PredictConfig fields
    torch_threads: int | None = None  # intra-op threads on a CPU worker; None = torch's default
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest kernels (tiles have one shape)
    keep_heap: bool = True  # keep large host buffers in the heap (see `keep_large_buffers`)

    @property
    def name(self) -> str:
        """Plugin name: one per (checkpoint content, prediction settings)."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()
        return PLUGIN_PREFIX + digest[:16]


def keep_large_buffers(threshold: int = 1 << 30) -> bool:
    """Let glibc reuse large freed buffers instead of unmapping them (True if applied).

    Two glibc defaults make every activation and tile buffer a fresh ``mmap`` whose pages
    fault in again on each forward pass:

    * Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes
      the mmap threshold at 128 KiB;
    * task threads allocate from per-thread arenas, whose heaps are capped at 64 MiB, so
      larger buffers are always mapped afresh, whatever the threshold.

    Raising both thresholds and keeping one arena (``M_ARENA_MAX=1``: large numpy/torch
    buffers, few threads, little lock contention) removed ~380 000 page faults per
    8×512×512 block on 2 CPU cores. The block then ran 1.5–1.8× faster, as fast in a worker
    thread as in a plain process. Call it before the threads that compute first allocate.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # from <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, threshold) and libc.mallopt(m_trim_threshold, threshold)
    return bool(ok) and bool(libc.mallopt(m_arena_max, 1))


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker and keeps it, with a small cache of opened things."""

    idempotent = True  # registering the same spec again keeps the loaded model

    def __init__(self, spec: ModelSpec, cache_size: int = 16) -> None:
        self.spec = spec
        self.name = spec.name
        self.cache_size = cache_size
        self.predictor = None
        self.checkpoint = None
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._users = 0  # tasks using the model right now (`in_use`)
        self._torn_down = False

    def __getstate__(self) -> dict[str, Any]:  # only the spec travels
        return {"spec": self.spec, "cache_size": self.cache_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["cache_size"])

    async def setup(self, worker: Any) -> None:
        # Off the event loop: hashing and loading a large checkpoint takes seconds.
        await asyncio.to_thread(self.load)

    def teardown(self, worker: Any) -> None:
        """Free the model, or let the last task still using it free it when it ends.

        Distributed tears plugins down when they are unregistered and when the worker closes
        (e.g. its scheduler died), whatever tasks are running: freeing the model under a
        running block would fail that block (``'NoneType' object has no attribute …``)."""
        with self._lock:
            self._torn_down = True
            busy = self._users > 0
        if not busy:
            self._free()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[ModelPlugin]:
        """Hold the model for a task: a teardown meanwhile waits for the task to end."""
        with self._lock:
            self._users += 1
        try:
            yield self
        finally:
            with self._lock:
                self._users -= 1
                last = self._torn_down and self._users == 0
            if last:
                self._free()

    def _free(self) -> None:
        self.predictor = self.checkpoint = None
        with self._lock:
            self._cache.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass

    def load(self) -> None:
        """Verify the checkpoint's SHA-256, load it and build the predictor (once)."""
        with self._load_lock:  # setup's thread and a first task may race
            if self.predictor is None:
                self._load()

    def _load(self) -> None:
        global LOADS
        import torch

        from unetcore.checkpoint import file_sha256, load_checkpoint
        from unetcore.predict import PredictConfig, TilePredictor

        actual = file_sha256(self.spec.checkpoint)
        if actual != self.spec.sha256:
            raise CheckpointMismatchError(
                f"Expected checkpoint {self.spec.checkpoint} with SHA-256 {self.spec.sha256[:12]}…. "
                f"Got {actual[:12]}… instead on this worker: the file differs between the client "
                "and the workers (copy the same file everywhere, or pass its hash explicitly)"
            )
        if self.spec.keep_heap:
            keep_large_buffers()
        self.use_threads()
        predict = PredictConfig(**_tuples(self.spec.predict))
        self.checkpoint = load_checkpoint(self.spec.checkpoint, device="cpu")
        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = self.spec.cudnn_benchmark
        self.predictor = TilePredictor(self.checkpoint.model, self.checkpoint.normalization, predict)
        LOADS += 1
        logger.info("loaded %s on %s (%d loads in this process)", self.spec.checkpoint, self.predictor.device, LOADS)

    def use_threads(self) -> None:
        """Give the calling thread the spec's torch intra-op threads (a per-thread setting)."""
        if self.spec.torch_threads:
            import torch

            if torch.get_num_threads() != self.spec.torch_threads:
                torch.set_num_threads(self.spec.torch_threads)

    def cached(self, key: Any, factory: Callable[[], Any]) -> Any:
        """The object under `key`, made by `factory` on first use (least recently used out)."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = factory()  # outside the lock: opening a remote array may take a while
        with self._lock:
            value = self._cache.setdefault(key, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def plugin_on_this_worker(name: str) -> ModelPlugin:
    """The registered `ModelPlugin` of the worker running the current task."""
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, ModelPlugin):
        raise RuntimeError(
            f"Expected the model plugin {name!r} on worker {worker.address}. Got "
            f"{sorted(worker.plugins)} instead; register it with client.register_plugin first"
        )
    return plugin


def _model_registry(client: Any, action: str, name: str, holder: str, keep_idle: int, **sync: Any) -> list[str]:
    """Run `action` ("hold", "release" or "drop") on the scheduler's table of model holds;
    the plugins it unregistered.

    One coroutine on the scheduler, under one lock, so holds, releases and the unregistering
    they cause never interleave. It is sent by value (a nested function using only the
    standard library): the scheduler need not import emunet.
    """

    async def registry(action: str, name: str, holder: str, owner: str, keep_idle: int, dask_scheduler: Any = None) -> list[str]:
        import asyncio

        state = getattr(dask_scheduler, "_emunet_models", None)
        if state is None:
            state = {"lock": asyncio.Lock(), "holders": {}, "used": {}, "tick": 0}
            dask_scheduler._emunet_models = state
        async with state["lock"]:
            holders, used = state["holders"], state["used"]
            live = set(dask_scheduler.clients)
            for held in holders.values():  # holds of clients that are gone
                for h in [h for h, c in held.items() if c not in live]:
                    del held[h]
            state["tick"] += 1
            if action == "hold":
                holders.setdefault(name, {})[holder] = owner
                used[name] = state["tick"]
                return []
            holders.get(name, {}).pop(holder, None)
            if name in used:
                used[name] = state["tick"]
            idle = sorted((n for n in used if not holders.get(n)), key=used.__getitem__, reverse=True)
            # "drop": the plugin failed to set up; never keep it for workers that join later.
            evict = idle[keep_idle:] + ([name] if action == "drop" and name in idle[:keep_idle] else [])
            gone = []
            for n in evict:
                used.pop(n, None)
                holders.pop(n, None)
                if n in dask_scheduler.worker_plugins:
                    await dask_scheduler.unregister_worker_plugin(None, n)  # teardown on every worker
                    gone.append(n)
            return gone

    return client.run_on_scheduler(registry, action, name, holder, client.id, keep_idle, **sync)


def hold_model(client: Any, spec: ModelSpec, holder: str, keep_idle: int = KEEP_IDLE_MODELS) -> str:
    """Hold `spec`'s plugin for `holder` (a run id) and register it (the model loads and is
    checked on every worker) unless it already is; the plugin's name.

    The hold comes first, so a concurrent release cannot unregister the plugin between our
    registration and our tasks. A registration that fails (e.g. `CheckpointMismatchError`)
    drops the hold and the plugin, unless another run holds it, and raises.
    """
    _model_registry(client, "hold", spec.name, holder, keep_idle)
    try:
        client.register_plugin(ModelPlugin(spec))  # idempotent: a no-op if registered already
    except Exception:
        try:
            _model_registry(client, "drop", spec.name, holder, keep_idle)
        except Exception:  # pragma: no cover - the registration's error matters more
            logger.warning("could not drop the model plugin %s", spec.name, exc_info=True)
        raise
    return spec.name


def release_model(client: Any, name: str, holder: str, keep_idle: int = KEEP_IDLE_MODELS, timeout_s: float = 30.0) -> list[str]:
    """Drop `holder`'s hold on plugin `name`; unregister idle plugins beyond the `keep_idle`
    most recently used. The plugins unregistered; never raises (a run's result matters more:
    a client without its scheduler has nothing left to release, the scheduler's table died
    with it).
    """
    if getattr(client, "status", "running") != "running":
        return []
    try:
        return _model_registry(client, "release", name, holder, keep_idle, callback_timeout=timeout_s)
    except Exception:
        logger.warning("could not release the model plugin %s", name, exc_info=True)
        return []


def held_models(client: Any) -> dict[str, list[str]]:
    """The scheduler's table: plugin name → holders (run ids); idle plugins map to []."""

    def table(dask_scheduler: Any) -> dict[str, list[str]]:
        state = getattr(dask_scheduler, "_emunet_models", None) or {"used": {}, "holders": {}}
        return {n: sorted(state["holders"].get(n, {})) for n in state["used"]}

    return client.run_on_scheduler(table)


OpsFactory = Callable[[ModelPlugin, dict[str, Any]], BlockOps]


@dataclass(frozen=True)
class GroupJob:
    """One task: consecutive block ids of a plan, and how to run them (no arrays, no model)."""

    block_ids: tuple[int, ...]
    plan: dict[str, Any]  # the plan as a small JSON-able dict (SegmentPlan.to_dict())
    plugin: str  # name of the registered ModelPlugin
    ops: OpsFactory  # builds the stages on the worker; a module-level function
    policy: RetryPolicy = RetryPolicy()
    depth: int = 1  # blocks waiting between stages
    compute_threads: int = 1  # threads sharing the device (see `run_group`)


def process_group(job: GroupJob) -> dict[str, Any]:
    """The Dask task: run `job`'s blocks through the worker's pipeline; a GroupReport dict."""
    plugin = plugin_on_this_worker(job.plugin)
    with plugin.in_use():  # a teardown (unregistered, worker closing) waits for this group
        plugin.load()  # no-op once loaded (setup already did it)
        ops = job.ops(plugin, job.plan)
        report = run_group(
            job.block_ids, ops, job.policy, depth=job.depth, compute_threads=job.compute_threads, worker=get_worker().address
        )
    report.model_loads = LOADS
    return report.to_dict()
