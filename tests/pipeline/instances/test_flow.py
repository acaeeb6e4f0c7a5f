"""The segment-instances flow against a temporary Prefect API, on the shared LocalCluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from emunet.cli.flow_commands import import_prefect

from .conftest import probability_from, voronoi_cells, write_probability_store

import_prefect()  # while stderr is the real one (see tests/flows/conftest.py)

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_flow_writes_labels_metrics_and_artifacts(tmp_path, client) -> None:
    from flows._common import ClusterParams
    from flows.segment_instances import SegmentInstancesParams, segment_instances
    from tests.flows.conftest import artifacts_of

    cells = voronoi_cells((6, 30, 27), 5, seed=2)
    url = write_probability_store(tmp_path / "out.zarr", probability_from(cells), (3, 15, 27))
    gt = tmp_path / "gt.zarr"
    zarr.create_array(str(gt), shape=cells.shape, chunks=cells.shape, dtype="int32")[...] = cells
    params = SegmentInstancesParams(output_url=url, ground_truth_url=str(gt), mode="3d", block_shape=(3, 15, 27),
                                    thresholds=(0.2, 0.4), min_size=10, cluster=ClusterParams(scheduler=client.scheduler.address))
    state = segment_instances(params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    labels = np.asarray(zarr.open_group(url, mode="r")["neuron_ids"][...])
    assert result["summary"]["segments"]["0.4"] == len(np.unique(labels))
    assert result["metrics"]["adapted_rand_error"] < 0.25

    found = artifacts_of(state.state_details.flow_run_id)
    assert set(found) == {"instances-summary", "instances-segments", "instances-sizes", "instances-metrics"}
    assert "xr.open_zarr" in found["instances-summary"].data
    table = found["instances-segments"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["threshold"] for r in rows] == [0.2, 0.4] and rows[1]["segments"] == len(np.unique(labels))

    bad = segment_instances(params.model_copy(update={"thresholds": (0.4, 2.0)}), return_state=True)
    assert bad.is_failed() and "thresholds in (0, 1]" in str(bad.message) + repr(bad.data)


def test_the_deployment_parameters_are_valid_flow_parameters() -> None:
    from pathlib import Path

    import yaml

    from flows.segment_instances import SegmentInstancesParams

    spec = yaml.safe_load((Path(__file__).resolve().parents[3] / "prefect.yaml").read_text())
    (deployment,) = [d for d in spec["deployments"] if d["name"] == "instances"]
    assert deployment["entrypoint"] == "flows/segment_instances.py:segment_instances"
    params = SegmentInstancesParams(**deployment["parameters"]["params"])
    assert params.thresholds == (0.6, 0.7, 0.75, 0.8)
