"""What ``--resume`` must find unchanged before it adds blocks to an existing output.

A resumed run writes its blocks beside blocks an earlier run wrote; the output must not
end up as two different computations glued together. The output's provenance (the
``emunet`` attribute, `pipeline.output.provenance`) records what produced it, and a resume
compares it with what would produce the new blocks, before any block runs:

===========  ===========================================  =====================================
provenance   compared                                     if it differs
===========  ===========================================  =====================================
``plan``     input URL, volume, block, chunk and shard    refused: the blocks and arrays would
``output``   shapes; array name, dtype, mask (`FIXED`)    not fit (``--overwrite`` starts again)
``plan``     checkpoint SHA-256, context, input level     refused, unless ``--allow-mismatch``:
``input``    grey range (the normalisation)               the new blocks' numbers would differ
``predict``  tta, compile, device class, precision, tile  from the old ones'
===========  ===========================================  =====================================

The input's own content is compared separately (`check_input_unchanged`, its fingerprint).
``allow_mismatch`` resumes despite the second kind; the differences are then appended to
the provenance (``emunet.resumed_with_differences``), so the output says it is mixed. An
output written before an entry existed is compared on what it records.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLAN_KEYS = ("input_url", "checkpoint_sha256", "volume_shape", "block_shape", "chunk_shape", "shard_shape", "context",
             "input_level")  # fmt: skip
FIXED_PLAN_KEYS = ("input_url", "volume_shape", "block_shape", "chunk_shape", "shard_shape")  # the rest: settings
OUTPUT_KEYS = ("name", "dtype", "mask")
OVERRIDE = "--allow-mismatch (allow_mismatch=True)"
# How to run with the stored value instead, per setting (formatted with it; see `_use_stored`).
_USE_STORED = {
    "input_level": "EMUNET_SEGMENT_INPUT_LEVEL={}",
    "grey range": "--grey-range {0[0]:g} {0[1]:g}",
    "device": "--device {}",
}


class PlanMismatchError(ValueError):
    """``resume=True`` on an output written with another plan or settings (names what differs)."""


@dataclass(frozen=True)
class Difference:
    """One thing a resume would change: its name, the stored value and the new one."""

    what: str
    stored: Any
    now: Any
    fixed: bool  # True: the output's layout or input; no flag overrides it

    def __str__(self) -> str:
        return f"{self.what}: stored {self.stored!r}, now {self.now!r}"


def precision(device_type: str, amp: bool) -> str:
    """The arithmetic a device type runs the model in: bf16 autocast only on CUDA with amp."""
    return "bfloat16 autocast" if device_type == "cuda" and amp else "float32"


def predict_settings(
    *, tta: bool, devices: Iterable[str] | None = None, amp: bool = True, tile: Sequence[int] | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """The ``emunet.predict`` provenance: how blocks are computed, besides plan and input.

    ``devices``: the workers' devices ("cpu", "cuda:0", …), or None where not known yet;
    ``tile``: the model's input tile for a whole block, or None where not known yet.
    Unknown entries are left out (and not compared).
    """
    settings: dict[str, Any] = {"tta": bool(tta), "compile": bool(compile)}  # compiled kernels round differently
    if devices is not None:
        types = sorted({str(d).split(":")[0] for d in devices})
        if types:
            settings["device"] = "+".join(types)
            settings["precision"] = "+".join(sorted({precision(t, amp) for t in types}))
    if tile is not None:
        settings["tile"] = [int(t) for t in tile]
    return settings


def differences(attrs: Mapping[str, Any], plan: Any, options: Any, extra: Mapping[str, Any] | None = None) -> list[Difference]:
    """Each difference between a stored provenance and a new run, in a fixed order."""
    from pipeline.ownership import same_location
    from pipeline.volume import redact_url

    meta = attrs.get("emunet") or {}
    stored, now = meta.get("plan") or {}, plan.to_dict()
    now["input_url"] = redact_url(plan.input_url)
    if isinstance(stored.get("input_url"), str) and same_location(stored["input_url"], now["input_url"]):
        now["input_url"] = stored["input_url"]  # the same input spelt another way (symlink, file://)
    diffs = [Difference(k, stored.get(k), now.get(k), k in FIXED_PLAN_KEYS) for k in PLAN_KEYS if stored.get(k) != now.get(k)]
    stored_opts = meta.get("output") or {}
    diffs += [
        Difference(f"output {k}", stored_opts.get(k), getattr(options, k), True)
        for k in OUTPUT_KEYS
        if stored_opts.get(k) != getattr(options, k)
    ]
    extra = extra or {}
    stored_in, now_in = meta.get("input") or {}, extra.get("input") or {}
    if "grey_range" in stored_in and now_in and list(stored_in["grey_range"]) != list(now_in.get("grey_range") or []):
        diffs.append(Difference("grey range", stored_in["grey_range"], now_in.get("grey_range"), False))
    stored_predict, now_predict = meta.get("predict") or {}, extra.get("predict") or {}
    diffs += [
        Difference(k, stored_predict[k], now_predict[k], False)
        for k in now_predict
        if k in stored_predict and stored_predict[k] != now_predict[k]
    ]
    if {d.what for d in diffs} & {"tta", "checkpoint_sha256"}:  # the context follows from them: no second item
        diffs = [d for d in diffs if d.what != "context"]
    return diffs


def _use_stored(d: Difference) -> str:
    """How to run with the stored value of `d`, for the message."""
    if d.what in ("tta", "compile"):
        return f"--{d.what}" if d.stored else f"no --{d.what}"
    if d.what == "precision":
        return "EMUNET_SEGMENT_AMP=" + ("1" if "bfloat16" in str(d.stored) else "0")
    if d.what == "tile" and isinstance(d.stored, list):
        return "--tile " + ",".join(map(str, d.stored))
    if d.what == "checkpoint_sha256":
        return f"the checkpoint whose SHA-256 is {str(d.stored)[:12]}…"
    if d.what == "context":
        return "the same model and --tta"
    try:
        return _USE_STORED.get(d.what, "{}").format(d.stored)
    except (TypeError, IndexError, ValueError):
        return f"{d.what} {d.stored!r}"


def check_resume(
    url: str,
    attrs: Mapping[str, Any],
    plan: Any,
    options: Any,
    extra: Mapping[str, Any] | None = None,
    *,
    allow_mismatch: bool = False,
) -> list[Difference]:
    """Refuse (`PlanMismatchError`) to resume ``url`` unless its provenance matches; with
    ``allow_mismatch``, the setting differences it lets through (never a fixed one)."""
    from pipeline.volume import redact_url

    where = redact_url(url)
    if (attrs.get("emunet") or {}).get("plan") is None:
        raise PlanMismatchError(
            f"expected an emunet output at {where} to resume, got a store without emunet "
            "provenance; choose another output or pass overwrite=True (--overwrite)"
        )
    diffs = differences(attrs, plan, options, extra)
    listed = "; ".join(map(str, diffs))
    fixed = [d.what for d in diffs if d.fixed]
    if fixed:
        raise PlanMismatchError(
            f"expected to resume {where} with the plan it was started with, got differences: {listed}. "
            f"{', '.join(fixed)} cannot change on resume, not even with --allow-mismatch: use the same input, "
            "block shape and output options, or pass overwrite=True (--overwrite) to start again"
        )
    if diffs and not allow_mismatch:
        stored = ", ".join(dict.fromkeys(_use_stored(d) for d in diffs))
        raise PlanMismatchError(
            f"expected to resume {where} with the settings it was started with, got differences: {listed}. "
            f"The new blocks would be computed differently from those already written. Resume with the stored "
            f"settings ({stored}), pass {OVERRIDE} to resume anyway (the output's provenance then records the "
            "differences), or overwrite=True (--overwrite) to start again"
        )
    return diffs


def record_mismatch(group: Any, diffs: list[Difference]) -> None:
    """Append the differences a resume was allowed to the output's provenance."""
    meta = dict(dict(group.attrs.asdict()).get("emunet") or {})
    entry = {
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "differences": [{"what": d.what, "stored": d.stored, "now": d.now} for d in diffs],
    }
    meta["resumed_with_differences"] = [*meta.get("resumed_with_differences", []), entry]
    group.attrs.update({"emunet": meta})


def _stored_fingerprint(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The input fingerprint an output recorded when it was created (`pipeline.fingerprint`)."""
    from pipeline.output import open_group

    meta = dict(open_group(url, "r", storage_options).attrs.asdict()).get("emunet") or {}
    return (meta.get("input") or {}).get("fingerprint")


def check_input_unchanged(url: str, volume: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume ``url`` when its input was replaced since the output was started
    (`pipeline.fingerprint`: metadata and sampled chunk hashes)."""
    from pipeline.fingerprint import fingerprint_changes
    from pipeline.volume import redact_url

    diffs = fingerprint_changes(_stored_fingerprint(url, storage_options), volume)
    if diffs:
        raise PlanMismatchError(
            f"expected to resume {redact_url(url)} on the input it was started with, got an input that changed since "
            f"({'; '.join(diffs)}): old and new blocks would mix. Segment the new input into a new output, or pass "
            "--overwrite to start this one again"
        )


def check_input_held_still(output_url: str, volume: Any) -> None:
    """The input's fingerprint again, after the blocks: an input replaced during the run (say
    `emunet import … --overwrite` of it) leaves blocks of the old and of the new data, none of
    which may count as done."""
    from pipeline.fingerprint import fingerprint_changes
    from pipeline.ledger import Ledger
    from pipeline.volume import open_volume, redact_url

    try:
        diffs = fingerprint_changes(_stored_fingerprint(output_url), open_volume(volume.url, level=volume.level, sparse=volume.sparse))
    except Exception as exc:  # a read that failed (throttling, a network blip) proves no change: keep the blocks
        logging.getLogger(__name__).warning(
            "could not read the input %s again after the run to check that it held still (%s: %s); the blocks stay "
            "done", redact_url(volume.url), type(exc).__name__, exc,
        )
        return
    if diffs:
        Ledger.open(output_url).reset()
        raise PlanMismatchError(
            f"expected the input {redact_url(volume.url)} to stay as it was while {redact_url(output_url)} was written, "
            f"got one that changed during the run ({'; '.join(diffs)}): its blocks read old and new data, so none is "
            "marked done; segment it again with --overwrite"
        )


__all__ = ["Difference", "OUTPUT_KEYS", "PLAN_KEYS", "PlanMismatchError", "check_input_held_still", "check_input_unchanged", "check_resume",
           "differences", "precision", "predict_settings", "record_mismatch"]  # fmt: skip
