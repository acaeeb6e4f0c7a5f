"""The resume ledger: which blocks of an output are done, and which failed and why.

It lives inside the output store, under ``ledger/``, as **one small object per block**::

    ledger/done/<id // 10000>/<id>     {"block": id, "time": …, "seconds": …}
    ledger/failed/<id>.json            {"block": id, "write_roi": …, "error": "…", "time": …}
    ledger/rollup/<group>.json         {"group": g, "blocks": n, "complete": true, …}

**Roll-ups keep reading cheap at 10^6 blocks.** The done markers of a group (10,000 ids,
one sub-directory) are listed only while the group is incomplete; the first reader that
finds every marker of a group present writes the group's roll-up, and from then on readers
list the ``rollup/`` prefix (one object per group: 100 at 10^6 blocks) instead of the
group's 10,000 markers. `emunet segment` rolls up at the end of its run (and the segment
flow's progress reads roll up as it goes), so the first `emunet status` after a run is
already cheap: 0.6 s for 10^6 blocks on local disk, 7.4 s when it must list every marker
(`bench/bench_status.py`). A finished 10^6-block output is read with one listing of
``rollup/`` and one of ``failed/``; during a run, with blocks done roughly in order, only
the groups not yet finished are listed. Markers are never rewritten, so the per-block
safety under concurrent writers is unchanged: a roll-up only states what the markers
already said, and a group's markers are never removed while its roll-up says "complete"
(`unmark_done`, used by ``status --repair``, removes the roll-up first).

One object per block is safe for any number of concurrent writers on a file system or an
object store (S3 has no atomic read-modify-write: a shared bitmap chunk written by two
workers at once would lose marks). A block is marked done only after its chunks are
written, so a crash between the two only repeats that block. A failure marker stays until
the block succeeds; `summary` counts a block as failed only if it is not done. A failure
marker that cannot be parsed (truncated, edited) still counts as a failure of the block its
name gives, with the error "unreadable marker …": markers are written whole (a rename, or
one PUT), so an unparseable one is damaged, not half-written.
"""

from __future__ import annotations

import datetime as _dt
import json
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.execute import error_text
from pipeline.geometry import Roi
from pipeline.markers import put_marker
from pipeline.volume import fsspec_filesystem, is_remote, redact_url

PREFIX = "ledger"
GROUP_SIZE = 10_000  # done markers per sub-directory (and per roll-up)


@dataclass(frozen=True)
class FailedBlock:
    block_id: int
    error: str
    write_roi: dict[str, list[int]] | None = None
    time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"block_id": self.block_id, "error": self.error, "write_roi": self.write_roi, "time": self.time}


@dataclass(frozen=True)
class LedgerSummary:
    """``done`` of ``total`` blocks; ``failed`` blocks (not done since) with their errors."""

    done: int
    total: int
    failed: tuple[FailedBlock, ...] = field(default_factory=tuple)

    @property
    def complete(self) -> bool:
        return self.done == self.total

    @property
    def failed_ids(self) -> list[int]:
        return [f.block_id for f in self.failed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "todo": self.total - self.done,
            "complete": self.complete,
            "failed": [f.to_dict() for f in self.failed],
        }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Ledger:
    """Done/failed markers of the blocks of one output (``num_blocks`` blocks)."""

    def __init__(self, output_url: str, num_blocks: int, storage_options: Mapping[str, Any] | None = None):
        if num_blocks < 0:
            raise ValueError(f"expected a non-negative number of blocks, got {num_blocks}")
        self.url = str(output_url)
        self.num_blocks = int(num_blocks)
        self._remote = is_remote(self.url)
        self.fs, root = fsspec_filesystem(self.url, storage_options)
        self.root = f"{root.rstrip('/')}/{PREFIX}"

    def __repr__(self) -> str:
        return f"Ledger({redact_url(self.url)!r}, num_blocks={self.num_blocks})"

    @classmethod
    def open(cls, output_url: str, storage_options: Mapping[str, Any] | None = None) -> Ledger:
        """The ledger of an output created by `pipeline.output.create_output`."""
        from pipeline.output import load_plan

        plan = load_plan(output_url, storage_options)
        return cls(output_url, plan.num_blocks, storage_options)

    # -- keys -------------------------------------------------------------------------
    def _check(self, block_id: int) -> int:
        block_id = int(block_id)
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"expected a block id in 0..{self.num_blocks - 1}, got {block_id}")
        return block_id

    def _done_key(self, block_id: int) -> str:
        return f"{self.root}/done/{block_id // GROUP_SIZE}/{block_id}"

    def _failed_key(self, block_id: int) -> str:
        return f"{self.root}/failed/{block_id}.json"

    def _rollup_key(self, group: int) -> str:
        return f"{self.root}/rollup/{group}.json"

    @property
    def num_groups(self) -> int:
        return -(-self.num_blocks // GROUP_SIZE)

    def _group_range(self, group: int) -> range:
        return range(group * GROUP_SIZE, min((group + 1) * GROUP_SIZE, self.num_blocks))

    def _put(self, key: str, payload: dict[str, Any]) -> None:
        put_marker(self.fs, key, payload, remote=self._remote)

    def _list(self, prefix: str) -> list[str]:
        if self._remote:
            self.fs.invalidate_cache(prefix)
        try:
            return list(self.fs.find(prefix))
        except FileNotFoundError:
            return []

    # -- marks ------------------------------------------------------------------------
    def mark_done(self, block_id: int, **info: Any) -> None:
        """Record that the block's chunks are written (call only after writing them)."""
        block_id = self._check(block_id)
        self._put(self._done_key(block_id), {"block": block_id, "time": _now(), **info})

    def mark_failed(self, block_id: int, error: BaseException | str, write_roi: Roi | None = None) -> None:
        """Record a failure (block id, write ROI and the error text with its traceback)."""
        block_id = self._check(block_id)
        if isinstance(error, BaseException):
            text = error_text(error, "".join(traceback.format_exception_only(type(error), error)).strip())
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            text, tb = str(error), ""
        roi = None if write_roi is None else {"offset": list(write_roi.offset), "shape": list(write_roi.shape)}
        self._put(
            self._failed_key(block_id),
            {"block": block_id, "write_roi": roi, "error": text, "traceback": tb[-4000:], "time": _now()},
        )

    def unmark_done(self, block_id: int) -> None:
        """Forget that the block is done (its done marker only), so a resume recomputes it.

        The group's roll-up goes first: no reader may see "complete" for a group that has a
        block without its marker."""
        block_id = self._check(block_id)
        rollup = self._rollup_key(block_id // GROUP_SIZE)
        if self.fs.exists(rollup):
            self.fs.rm(rollup)
        key = self._done_key(block_id)
        if self.fs.exists(key):
            self.fs.rm(key)

    def is_done(self, block_id: int) -> bool:
        return bool(self.fs.exists(self._done_key(self._check(block_id))))

    def complete_groups(self) -> set[int]:
        """Groups whose roll-up says every block is done (one listing of ``rollup/``)."""
        groups = set()
        for key in self._list(f"{self.root}/rollup"):
            name = key.rsplit("/", 1)[-1]
            stem = name[: -len(".json")] if name.endswith(".json") else ""
            if stem.isdigit() and int(stem) < self.num_groups:
                groups.add(int(stem))
        return groups

    def done_mask(self, *, roll_up: bool = True) -> np.ndarray:
        """Boolean array, one entry per block: True where done.

        One listing of ``rollup/``, then one of each group without a roll-up; a group found
        complete gets its roll-up (with ``roll_up``), so the next reader skips its markers."""
        mask = np.zeros(self.num_blocks, dtype=bool)
        complete = self.complete_groups()
        for group in range(self.num_groups):
            blocks = self._group_range(group)
            if group in complete:
                mask[blocks.start : blocks.stop] = True
                continue
            for key in self._list(f"{self.root}/done/{group}"):
                name = key.rsplit("/", 1)[-1]
                if name.isdigit() and int(name) in blocks:
                    mask[int(name)] = True
            if roll_up and mask[blocks.start : blocks.stop].all():
                self._put(self._rollup_key(group), {"group": group, "blocks": len(blocks), "first": blocks.start,
                                                    "complete": True, "time": _now()})  # fmt: skip
        return mask

    def done_ids(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.done_mask())]

    def pending_ids(self, block_ids: Iterable[int] | None = None) -> Iterator[int]:
        """The given block ids (default: all) that are not done, in order."""
        done = self.done_mask()
        ids = range(self.num_blocks) if block_ids is None else block_ids
        return (int(i) for i in ids if not done[int(i)])

    def failures(self, done: np.ndarray | None = None) -> dict[int, FailedBlock]:
        """Failure markers by block; with a `done` mask, those of done blocks are not read
        (a run that failed many blocks and then finished leaves their markers behind)."""
        out: dict[int, FailedBlock] = {}
        for key in self._list(f"{self.root}/failed"):
            name = key.rsplit("/", 1)[-1]
            if not name.endswith(".json") or not name[: -len(".json")].isdigit():
                continue
            block = int(name[: -len(".json")])
            if done is not None and (block >= self.num_blocks or done[block]):
                continue
            try:
                raw = self.fs.cat_file(key)
            except FileNotFoundError:  # removed since the listing (the block succeeded)
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (UnicodeDecodeError, ValueError) as exc:
                error = f"unreadable marker {name} ({len(raw)} bytes: {exc}); the block is treated as failed"
                out[block] = FailedBlock(block, error)
                continue
            out[block] = FailedBlock(block, str(record.get("error", "")), record.get("write_roi"), str(record.get("time", "")))
        return out

    def summary(self) -> LedgerSummary:
        """Done/total, and the failed blocks (those not done since) with their errors."""
        done = self.done_mask()
        failed = tuple(f for i, f in sorted(self.failures(done).items()) if i < self.num_blocks and not done[i])
        return LedgerSummary(done=int(done.sum()), total=self.num_blocks, failed=failed)

    def reset(self) -> None:
        """Forget every mark (the output's chunks stay)."""
        for sub in ("rollup", "done", "failed"):
            path = f"{self.root}/{sub}"
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
