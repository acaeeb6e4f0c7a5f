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
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.execute import BlockOps, GroupReport, RetryPolicy, run_group

logger = logging.getLogger(__name__)

LOADS = 0  # models this process has loaded (read by the tests and reported per group)
PLUGIN_PREFIX = "emunet-model-"


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

    def __getstate__(self) -> dict[str, Any]:  # only the spec travels
        return {"spec": self.spec, "cache_size": self.cache_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"], state["cache_size"])

    async def setup(self, worker: Any) -> None:
        # Off the event loop: hashing and loading a large checkpoint takes seconds.
        await asyncio.to_thread(self.load)

    def teardown(self, worker: Any) -> None:
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
    plugin.load()  # no-op once loaded (setup already did it)
    ops = job.ops(plugin, job.plan)
    report = run_group(
        job.block_ids, ops, job.policy, depth=job.depth, compute_threads=job.compute_threads, worker=get_worker().address
    )
    report.model_loads = LOADS
    return report.to_dict()
