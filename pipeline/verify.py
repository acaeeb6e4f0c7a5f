"""Check that every block the ledger calls done still has its output chunks in the store.

A done marker is written after the block's chunks (`pipeline.ledger`), so a done block
whose chunk is missing lost it afterwards (deleted by hand, a lifecycle rule, a partial
copy). `verify_output` lists each written array of the output once (one listing per
array, however many blocks) and names the done blocks with a missing chunk (or shard);
`repair_output` then removes exactly those blocks' done markers — objects the ledger
wrote — and records a failure marker that says why, so ``segment --resume`` recomputes
them. Nothing else is deleted or changed::

    OUT.zarr/probability/c/0/1/2    ← missing
    OUT.zarr/ledger/done/0/5        ← block 5 wrote c/0/1/2: marker removed by repair
    OUT.zarr/ledger/failed/5.json   ← "output chunk missing: probability/c/0/1/2 …"
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.ledger import Ledger
from pipeline.output import load_plan, open_group
from pipeline.plan import SegmentPlan
from pipeline.volume import fsspec_filesystem


@dataclass(frozen=True)
class MissingBlock:
    """A done block with missing output chunks (keys relative to the output root)."""

    block_id: int
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"block_id": self.block_id, "missing": list(self.missing)}


@dataclass(frozen=True)
class VerifyReport:
    """``checked`` done blocks of ``arrays``; ``missing`` those with chunks gone."""

    checked: int
    arrays: tuple[str, ...]
    missing: tuple[MissingBlock, ...] = field(default_factory=tuple)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "arrays": list(self.arrays),
            "missing": [m.to_dict() for m in self.missing],
            "repaired": self.repaired,
        }


def written_arrays(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The arrays every block writes: the probability array and, if asked for, ``mask`` and
    its label image (`pipeline.labels`)."""
    from pipeline.labels import MASK_LABEL_ARRAY

    options = (attrs.get("emunet") or {}).get("output") or {}
    names = [str(options.get("name", "probability"))]
    if options.get("mask"):
        names += ["mask", MASK_LABEL_ARRAY]
    return tuple(names)


def _stored_keys(fs: Any, root: str, name: str) -> set[str]:
    """Every object under ``root/name`` as a key relative to ``root`` (one listing)."""
    prefix = f"{root}/{name}"
    fs.invalidate_cache(prefix)
    try:
        return {key[len(root) + 1 :] for key in fs.find(prefix)}
    except FileNotFoundError:
        return set()


def _block_keys(plan: SegmentPlan, block_id: int, array: Any, name: str) -> list[str]:
    """Keys of the stored chunks (shards when sharded) that ``block_id`` writes in ``array``."""
    unit = plan.shard_shape or plan.chunk_shape
    roi = plan.block(block_id).write_roi
    ranges = [
        range(o // u, -(-(o + s) // u)) for o, s, u in zip(roi.offset, roi.shape, unit, strict=True)
    ]
    return [f"{name}/{array.metadata.encode_chunk_key(idx)}" for idx in itertools.product(*ranges)]


def verify_output(url: str, storage_options: Mapping[str, Any] | None = None) -> VerifyReport:
    """Check each done block's output chunks exist; list the blocks where some do not."""
    plan = load_plan(url, storage_options)
    group = open_group(url, "r", storage_options)
    arrays = tuple(name for name in written_arrays(dict(group.attrs.asdict())) if name in group)
    ledger = Ledger(url, plan.num_blocks, storage_options)
    done = ledger.done_ids()
    fs, root = fsspec_filesystem(url, storage_options)
    root = root.rstrip("/")
    stored = {name: _stored_keys(fs, root, name) for name in arrays}
    opened = {name: group[name] for name in arrays}
    missing = []
    for block_id in done:
        gone = [
            key
            for name in arrays
            for key in _block_keys(plan, block_id, opened[name], name)
            if key not in stored[name]
        ]
        if gone:
            missing.append(MissingBlock(block_id, tuple(gone)))
    return VerifyReport(checked=len(done), arrays=arrays, missing=tuple(missing))


def repair_output(url: str, report: VerifyReport, storage_options: Mapping[str, Any] | None = None) -> VerifyReport:
    """Forget the done marks of ``report``'s blocks (and say why in a failure marker), so a
    resumed run recomputes them. Only ledger markers are touched."""
    plan = load_plan(url, storage_options)
    ledger = Ledger(url, plan.num_blocks, storage_options)
    for block in report.missing:
        shown = ", ".join(block.missing[:3]) + (f" and {len(block.missing) - 3} more" if len(block.missing) > 3 else "")
        ledger.mark_failed(
            block.block_id,
            f"output chunk missing: {shown} (found by `emunet status --verify`); `segment --resume` recomputes it",
            plan.block(block.block_id).write_roi,
        )
        ledger.unmark_done(block.block_id)
    return VerifyReport(report.checked, report.arrays, report.missing, repaired=True)


__all__ = ["MissingBlock", "VerifyReport", "repair_output", "verify_output", "written_arrays"]
