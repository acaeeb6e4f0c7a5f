"""What the instance stage does: one frozen, JSON-serialisable `InstanceConfig`.

The stage turns a cell-probability map (``probability``: 1 = cell interior, 0 = membrane)
into neuron instances in four blockwise passes (see `pipeline.instances.driver`)::

    probability ─► fragments ─► region graph ─► agglomeration tree ─► neuron_ids
                   (watershed    (edges with     (union-find per        (fragment → segment
                    per block)    contact stats)  threshold, in a tree)  lookup, blockwise)

Every parameter has a one-line comment on its default. Errors say "expected X, got Y".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

MODES = ("auto", "2d", "3d")
METHODS = ("watershed", "components")
SCORES = ("mean", "quantile")
ANISOTROPY = 3.0  # z spacing ≥ this × the xy spacing → the ssTEM case: fragments per 2D slice


@dataclass(frozen=True)
class InstanceConfig:
    """Parameters of fragments, region graph and agglomeration (all of them provenance)."""

    method: str = "watershed"  # "watershed" (seeded, on 1 − p) or "components" (of p > seed_threshold)
    mode: str = "auto"  # "2d" per slice, "3d", or "auto": 2d when z spacing ≥ 3× the xy spacing
    seed_threshold: float = 0.5  # cell mask = p > this; seeds = maxima of its distance transform
    seed_distance: int = 3  # seeds are maxima within (2·this + 1) voxels in xy (and z in 3D)
    min_size: int = 20  # fragments smaller than this (voxels, in the read ROI) are flooded by neighbours
    context: int = 16  # voxels read beyond the block in xy (and z in 3D): the watershed's margin
    block_shape: tuple[int, int, int] | None = None  # None: chunk multiples near (8, 256, 256) / 64³
    thresholds: tuple[float, ...] = (0.6, 0.7, 0.75, 0.8)  # merge edges with score < t, for each t (ISBI: 0.75 best)
    score: str = "mean"  # edge score: "mean" or "quantile" of 1 − p along the contact
    quantile: float = 0.75  # the quantile stored (and used when score = "quantile")
    labels_threshold: float | None = None  # which t fills `neuron_ids`; None = the middle one
    tree_fanout: int = 2  # children per axis of each agglomeration tree node
    link_z: bool = False  # mode "2d": also merge across slices (off: one segmentation per slice, ssTEM)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"expected a method in {METHODS}, got {self.method!r}")
        if self.mode not in MODES:
            raise ValueError(f"expected a mode in {MODES}, got {self.mode!r}")
        if self.score not in SCORES:
            raise ValueError(f"expected a score in {SCORES}, got {self.score!r}")
        if not 0.0 < self.seed_threshold < 1.0:
            raise ValueError(f"expected a seed threshold in (0, 1), got {self.seed_threshold}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"expected a quantile in [0, 1], got {self.quantile}")
        for name in ("seed_distance", "min_size", "context"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"expected {name} ≥ 0, got {getattr(self, name)}")
        if self.tree_fanout < 2:
            raise ValueError(f"expected tree_fanout ≥ 2, got {self.tree_fanout}")
        ths = tuple(float(t) for t in self.thresholds)
        if not ths:
            raise ValueError("expected at least one agglomeration threshold, got none")
        bad = [t for t in ths if not 0.0 < t <= 1.0]
        if bad:
            raise ValueError(
                f"expected agglomeration thresholds in (0, 1] (scores are boundary probabilities), got {bad}; "
                "pass e.g. --thresholds 0.3,0.5,0.7"
            )
        if len(set(ths)) != len(ths):
            raise ValueError(f"expected distinct thresholds, got {ths}")
        object.__setattr__(self, "thresholds", tuple(sorted(ths)))
        if self.labels_threshold is not None and float(self.labels_threshold) not in self.thresholds:
            raise ValueError(
                f"expected labels_threshold to be one of the thresholds {self.thresholds}, got {self.labels_threshold}"
            )
        if self.block_shape is not None:
            shape = tuple(int(v) for v in self.block_shape)
            if len(shape) != 3 or any(v < 1 for v in shape):
                raise ValueError(f"expected a block shape of 3 positive integers (z, y, x), got {self.block_shape}")
            object.__setattr__(self, "block_shape", shape)

    @property
    def labels_index(self) -> int:
        """Index into `thresholds` of the segmentation written to ``neuron_ids``."""
        if self.labels_threshold is None:
            return len(self.thresholds) // 2
        return self.thresholds.index(float(self.labels_threshold))

    def resolved_mode(self, voxel_size: Sequence[float]) -> str:
        """"2d" or "3d" for a volume of ``voxel_size`` (z, y, x) nm."""
        if self.mode != "auto":
            return self.mode
        z, y, x = (float(v) for v in voxel_size)
        return "2d" if z >= ANISOTROPY * max(y, x) else "3d"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = list(self.thresholds)
        out["block_shape"] = None if self.block_shape is None else list(self.block_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"expected instance-config keys among {sorted(known)}, got unknown {unknown}")
        kwargs = dict(data)
        if kwargs.get("thresholds") is not None:
            kwargs["thresholds"] = tuple(kwargs["thresholds"])
        if kwargs.get("block_shape") is not None:
            kwargs["block_shape"] = tuple(kwargs["block_shape"])
        return cls(**kwargs)


# Keys whose change makes stored fragments / graph / trees invalid (a resume must match).
RESUME_KEYS = tuple(f.name for f in fields(InstanceConfig) if f.name not in ("labels_threshold",))
