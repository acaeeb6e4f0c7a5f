"""What ``--resume`` must find unchanged before it adds blocks to an existing output.

A resumed run writes its blocks beside blocks an earlier run wrote; the output must not
end up as two different computations glued together. The output's provenance (the
``emunet`` attribute, `pipeline.output.provenance`) records what produced it, and a resume
compares it with what would produce the new blocks:

============  ==================================  ===========================================
provenance    compared                            why
============  ==================================  ===========================================
``plan``      input URL, checkpoint SHA-256,      the blocks' layout and the model
              shapes, context (`PLAN_KEYS`)
``output``    array name, dtype, mask             the arrays written into
``input``     grey range; the input's             the normalisation; a replaced input
              fingerprint (`check_input_unchanged`)
``predict``   test-time augmentation              how a block's numbers are computed
============  ==================================  ===========================================

An output written before an entry existed is compared on what it records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLAN_KEYS = ("input_url", "checkpoint_sha256", "volume_shape", "block_shape", "chunk_shape", "shard_shape", "context")
OUTPUT_KEYS = ("name", "dtype", "mask")


class PlanMismatchError(ValueError):
    """``resume=True`` on an output written with another plan or settings (names what differs)."""


def predict_settings(*, tta: bool) -> dict[str, Any]:
    """The ``emunet.predict`` provenance: how blocks are predicted, besides plan and input."""
    return {"tta": bool(tta)}


def differences(attrs: Mapping[str, Any], plan: Any, options: Any, extra: Mapping[str, Any] | None = None) -> list[str]:
    """Each difference between a stored provenance and a new run, as "what: stored X, now Y"."""
    from pipeline.volume import redact_url

    meta = attrs.get("emunet") or {}
    stored, now = meta.get("plan") or {}, plan.to_dict()
    now["input_url"] = redact_url(plan.input_url)
    diffs = [f"{k}: stored {stored.get(k)!r}, now {now.get(k)!r}" for k in PLAN_KEYS if stored.get(k) != now.get(k)]
    stored_opts = meta.get("output") or {}
    diffs += [
        f"output {k}: stored {stored_opts.get(k)!r}, now {getattr(options, k)!r}"
        for k in OUTPUT_KEYS
        if stored_opts.get(k) != getattr(options, k)
    ]
    extra = extra or {}
    stored_in, now_in = meta.get("input") or {}, extra.get("input") or {}
    if "grey_range" in stored_in and now_in and list(stored_in["grey_range"]) != list(now_in.get("grey_range") or []):
        diffs.append(f"grey range: stored {stored_in['grey_range']}, now {now_in.get('grey_range')}")
    stored_predict, now_predict = meta.get("predict") or {}, extra.get("predict") or {}
    diffs += [
        f"{k}: stored {stored_predict[k]!r}, now {now_predict[k]!r}"
        for k in now_predict
        if k in stored_predict and stored_predict[k] != now_predict[k]
    ]
    return diffs


def check_resume(url: str, attrs: Mapping[str, Any], plan: Any, options: Any, extra: Mapping[str, Any] | None = None) -> None:
    """Refuse (`PlanMismatchError`) to resume ``url`` unless its provenance matches."""
    from pipeline.volume import redact_url

    if (attrs.get("emunet") or {}).get("plan") is None:
        raise PlanMismatchError(
            f"expected an emunet output at {redact_url(url)} to resume, got a store without emunet "
            "provenance; choose another output or pass overwrite=True (--overwrite)"
        )
    diffs = differences(attrs, plan, options, extra)
    if diffs:
        raise PlanMismatchError(
            f"expected to resume {redact_url(url)} with the plan and settings it was started with, got differences: "
            + "; ".join(diffs)
            + ". Use the same input, checkpoint, block shape and settings (e.g. --tta as stored), or pass "
            "overwrite=True (--overwrite)"
        )


def check_input_unchanged(url: str, volume: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse to resume ``url`` when its input was replaced since the output was started
    (`pipeline.fingerprint`: metadata and sampled chunk hashes)."""
    from pipeline.fingerprint import fingerprint_changes
    from pipeline.output import open_group
    from pipeline.volume import redact_url

    stored = ((dict(open_group(url, "r", storage_options).attrs.asdict()).get("emunet") or {}).get("input") or {})
    diffs = fingerprint_changes(stored.get("fingerprint"), volume)
    if diffs:
        raise PlanMismatchError(
            f"expected to resume {redact_url(url)} on the input it was started with, got an input that changed since "
            f"({'; '.join(diffs)}): old and new blocks would mix. Segment the new input into a new output, or pass "
            "--overwrite to start this one again"
        )


__all__ = ["OUTPUT_KEYS", "PLAN_KEYS", "PlanMismatchError", "check_input_unchanged", "check_resume", "differences",
           "predict_settings"]  # fmt: skip
