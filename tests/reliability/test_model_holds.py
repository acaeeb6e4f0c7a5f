"""The pieces behind the cluster faults, without a cluster: the scheduler-side table of model
holds (`pipeline.worker.hold_model`/`release_model`) and a plugin's teardown while a group
uses its model. The same behaviour with real processes: `test_cluster_faults.py`; what
distributed logs when the scheduler goes away: `tests/pipeline/test_cluster.py`."""

from __future__ import annotations

import pytest


class FakeScheduler:
    """What the hold table touches on a `distributed.Scheduler`: clients, worker plugins."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.clients: dict[str, object] = {}
        self.worker_plugins: dict[str, bytes] = {}
        self.unregistered: list[str] = []

    async def unregister_worker_plugin(self, comm, name: str) -> dict:
        del self.worker_plugins[name]
        self.unregistered.append(name)
        return {}


class FakeClient:
    """`run_on_scheduler` runs the function as the scheduler would: unpickled (by value)."""

    def __init__(self, scheduler: FakeScheduler, name: str, fail: bool = False) -> None:
        self.scheduler, self.id, self.fail, self.status = scheduler, name, fail, "running"
        scheduler.clients[name] = self

    def run_on_scheduler(self, fn, *args, callback_timeout=None):
        import pickle

        import cloudpickle

        import inspect

        result = pickle.loads(cloudpickle.dumps(fn))(*args, dask_scheduler=self.scheduler)
        return self.scheduler.loop.run_until_complete(result) if inspect.isawaitable(result) else result

    def register_plugin(self, plugin) -> None:
        self.scheduler.worker_plugins.setdefault(plugin.name, b"")
        if self.fail:
            raise ValueError("setup failed on a worker")


def test_model_holds_share_a_plugin_and_bound_the_idle_ones() -> None:
    """The scheduler-side table alone: a plugin held by a run is never unregistered; idle
    ones beyond `KEEP_IDLE_MODELS` (the least recently used) are; a gone client's holds are
    dropped; a plugin whose setup failed is never kept; a client without its scheduler
    releases nothing (and does not raise)."""
    from pipeline.worker import KEEP_IDLE_MODELS, ModelSpec, held_models, hold_model, release_model

    assert KEEP_IDLE_MODELS == 1
    spec = {k: ModelSpec(f"/m/{k}.safetensors", k * 64) for k in "abcd"}
    name = {k: s.name for k, s in spec.items()}
    sched = FakeScheduler()
    one, two, ghost = FakeClient(sched, "Client-1"), FakeClient(sched, "Client-2"), FakeClient(sched, "Client-3")
    try:
        hold_model(one, spec["a"], "run-1")
        hold_model(two, spec["a"], "run-2")  # the same model at once: one plugin, two holders
        hold_model(one, spec["b"], "run-3")
        hold_model(ghost, spec["c"], "run-4")
        assert held_models(one) == {name["a"]: ["run-1", "run-2"], name["b"]: ["run-3"], name["c"]: ["run-4"]}
        assert release_model(one, name["a"], "run-1") == []  # run-2 still holds it
        assert release_model(one, name["b"], "run-3") == []  # idle, the most recent: kept warm
        del sched.clients["Client-3"]  # the ghost goes away without releasing
        assert release_model(two, name["a"], "run-2") == [name["b"], name["c"]]  # a is now the most recent idle one
        assert sorted(sched.worker_plugins) == [name["a"]] and held_models(one) == {name["a"]: []}
        hold_model(one, spec["a"], "run-5")  # warm: still registered
        with pytest.raises(ValueError, match="setup failed"):
            hold_model(FakeClient(sched, "Client-4", fail=True), spec["d"], "run-6")
        assert name["d"] not in sched.worker_plugins, "a plugin that failed to set up is not kept"
        two.status = "connecting"  # lost its scheduler: nothing to release, no error
        assert release_model(two, name["a"], "run-5") == []
        assert release_model(one, name["a"], "run-5") == [] and sorted(sched.worker_plugins) == [name["a"]]
    finally:
        sched.loop.close()


def test_a_teardown_waits_for_the_task_using_the_model(checkpoint) -> None:
    """Distributed tears a plugin down when it is unregistered or its worker closes (its
    scheduler died), tasks running or not. The model must outlive the running group, else
    its current block fails with "'NoneType' object has no attribute 'predict_region'" and
    is marked failed (seen once in three runs of `test_the_scheduler_dying_mid_run`)."""
    from pipeline.worker import ModelPlugin, ModelSpec
    from unetcore.checkpoint import file_sha256

    plugin = ModelPlugin(ModelSpec(str(checkpoint), file_sha256(checkpoint), torch_threads=1))
    plugin.load()
    with plugin.in_use():
        plugin.teardown(None)
        assert plugin.predictor is not None  # the running group keeps its model
    assert plugin.predictor is None and plugin.checkpoint is None  # freed when it ends
    plugin.teardown(None)  # idle: freed at once (twice is harmless)
    with plugin.in_use():  # a group that started after the teardown loads it again
        plugin.load()
        assert plugin.predictor is not None
    assert plugin.predictor is None
