"""Neuron instances from a cell-probability map, blockwise: fragments, region graph,
agglomeration tree, relabelled ``neuron_ids``, and metrics over label volumes.

Module names are the vocabulary: `config`, `layout`, `fragments`, `region_graph`,
`agglomerate`, `relabel`, `runner`, `driver` (the stage end to end), `volume_metrics`.
Nothing here imports Prefect. See ``docs/instances.md``.
"""

from .config import InstanceConfig
from .driver import InstanceSummary, InstancesExistError, prepare, run_instances

__all__ = ["InstanceConfig", "InstanceSummary", "InstancesExistError", "prepare", "run_instances"]
