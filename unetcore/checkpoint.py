"""Checkpoints: safetensors weights whose header carries the model's JSON description.

One file, ``NAME.safetensors``, holds the tensors and, in its metadata under ``"emunet"``,
a JSON object: format version, model config, normalisation, training metadata and
``content_sha256``, the SHA-256 of everything that changes the numbers: the tensors, the
model config and the normalisation (format 2; format 1 covered the tensors alone and still
loads, with a warning). A human-readable copy of that JSON (plus the file's own
SHA-256) is written beside it as ``NAME.json``. Loading never unpickles anything: the
safetensors format holds raw tensors only, and a pickle is refused by its magic bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save_file

from unetcore.config import UNetConfig
from unetcore.model import UNet
from unetcore.normalization import Normalization

FORMAT = "emunet-checkpoint/2"
FORMAT_V1 = "emunet-checkpoint/1"  # content_sha256 over the tensors only
FORMATS = (FORMAT, FORMAT_V1)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle; torch.save's zip container


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (names the problem and the fix)."""


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def content_hash(tensors: dict[str, torch.Tensor], model_config: dict[str, Any], normalization: dict[str, Any]) -> str:
    """SHA-256 of what changes a checkpoint's numbers: tensors, model config, normalisation.

    The two JSON parts are hashed in canonical form (sorted keys, no spaces), so a header
    re-serialised with another layout keeps its hash and any edited value does not.
    """
    h = hashlib.sha256(tensor_hash(tensors).encode())
    for part in (model_config, normalization):
        h.update(b"|" + json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its config, normalisation and metadata."""

    model: UNet
    config: UNetConfig
    normalization: Normalization
    metadata: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    file_sha256: str = ""  # of the file as read (`file_sha256`), when loaded from a file


def save_checkpoint(
    path: str | os.PathLike[str],
    model: UNet,
    normalization: Normalization,
    metadata: dict[str, Any] | None = None,
    *,
    extra: dict[str, torch.Tensor] | None = None,
    half: bool = False,
) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the path.

    `extra` holds further tensors (e.g. optimizer momentum under ``optim.``) for resuming;
    `half` stores the model's float weights as float16 (smaller files for shipping).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"expected a checkpoint path ending in .safetensors, got {path}")
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    for k, v in (extra or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    header = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "normalization": normalization.to_dict(),
        "metadata": metadata or {},
        "content_sha256": content_hash(tensors, model.config.to_dict(), normalization.to_dict()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"emunet": json.dumps(header)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # a shareable file, like any other the user writes
    os.replace(tmp, path)
    sidecar = dict(header, file_sha256=file_sha256(path))
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp_json, path.with_suffix(".json"))
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON header, read without loading tensors (no unpickling ever)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint file, got no file at {path}")
    with open(path, "rb") as f:
        return _parse_header(path, f, path.stat().st_size)


def inspect_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """(header, SHA-256 of the file) from one pass over the file (no tensors built)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint file, got no file at {path}")
    with open(path, "rb") as f:
        header = _parse_header(path, f, path.stat().st_size)
        f.seek(0)
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return header, h.hexdigest()


def _parse_header(path: Path, f: Any, size: int) -> dict[str, Any]:
    """The emunet header of the safetensors file open as ``f`` (binary, at its start)."""
    head = f.read(8)
    header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
    # A safetensors file: 8 bytes of header length, then a JSON object. Decide on that first:
    # the length's low byte may well be 0x80, the first byte of a pickle.
    safetensors = 0 < header_len and 8 + header_len <= size and f.read(1) == b"{"
    if not safetensors and (head[:1] in _PICKLE_MAGIC or head[:4] in _PICKLE_MAGIC):
        raise CheckpointError(
            f"expected a safetensors checkpoint, got a pickle/torch.save file at {path}; "
            "emunet never unpickles (it can run code). Load it once in a trusted "
            "environment and re-save it with unetcore.checkpoint.save_checkpoint"
        )
    if len(head) < 8:
        raise CheckpointError(f"expected a safetensors checkpoint, got a truncated file at {path}")
    if not safetensors:
        raise CheckpointError(
            f"expected a safetensors header of ≤ {size - 8} bytes, got a length of {header_len} "
            f"at {path} (truncated or not a safetensors file)"
        )
    f.seek(8)
    try:
        raw = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"expected a JSON safetensors header at {path}, got {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("__metadata__") or {}, dict):
        raise CheckpointError(f"expected a safetensors header object at {path}, got {type(raw).__name__}")
    meta = (raw.get("__metadata__") or {}).get("emunet")
    if meta is None:
        raise CheckpointError(
            f"expected an emunet checkpoint (metadata key 'emunet') at {path}, got a plain "
            "safetensors file; save it with unetcore.checkpoint.save_checkpoint"
        )
    try:
        header = json.loads(meta) if isinstance(meta, str) else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"expected a JSON object under the 'emunet' metadata key at {path}, got {meta!r:.60}")
    if header.get("format") not in FORMATS:
        raise CheckpointError(f"expected checkpoint format {FORMAT!r}, got {header.get('format')!r}")
    for key, kind in (("model_config", dict), ("normalization", dict), ("content_sha256", str)):
        if not isinstance(header.get(key), kind):
            raise CheckpointError(
                f"expected {key!r} ({kind.__name__}) in the checkpoint header at {path}, got "
                f"{type(header.get(key)).__name__}; re-save it with unetcore.checkpoint.save_checkpoint"
            )
    try:  # every reader of the header may build the model config: check it once, here
        UNetConfig.from_dict(header["model_config"])
        Normalization.from_dict(header["normalization"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"expected a valid model config and normalisation in the header of {path}, got: {exc}") from None
    return header


def _verify(path: str | os.PathLike[str], header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint whose tensors, model config or normalisation were changed."""
    if header["format"] == FORMAT_V1:
        if tensor_hash(tensors) != header["content_sha256"]:
            raise CheckpointError(
                f"expected tensor contents with SHA-256 {header['content_sha256'][:12]}…, got different "
                f"contents in {path}: the file is corrupt or was modified"
            )
        warnings.warn(
            f"{path} is a format-1 checkpoint, whose hash does not cover its normalisation; re-save it "
            "(unetcore.checkpoint.save_checkpoint) so that an edited header is refused",
            stacklevel=3,
        )
        return
    try:
        actual = content_hash(tensors, header["model_config"], header["normalization"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"expected a JSON model config and normalisation in {path}, got {exc}") from None
    if actual != header["content_sha256"]:
        raise CheckpointError(
            f"expected contents (tensors, model config, normalisation) with SHA-256 {header['content_sha256'][:12]}…, "
            f"got different contents in {path}: the file is corrupt or was modified (an edited header counts)"
        )


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", verify: bool = True
) -> Checkpoint:
    """Load a checkpoint written by `save_checkpoint`; the model is returned in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a checkpoint file, got no file at {path}")
    data = path.read_bytes()  # one read: the header, the tensors and the file's hash come from it
    header = _parse_header(path, io.BytesIO(data), len(data))
    try:
        tensors = load_tensors(data)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"expected a readable safetensors file at {path}, got: {exc}") from None
    if verify:
        _verify(path, header, tensors)
    try:
        config = UNetConfig.from_dict(header["model_config"])
        normalization = Normalization.from_dict(header["normalization"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"expected a valid model config and normalisation in {path}, got: {exc}") from None
    model = UNet(config)
    state = {k[len("model.") :]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in sorted(state.items())  # by name: the message does not depend on the file's order
        if k in expected and expected[k].shape != v.shape
    ]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if mismatched or missing or unexpected:
        detail = "; ".join(mismatched[:3] + [f"missing {m}" for m in missing[:3]] + [f"unexpected {u}" for u in unexpected[:3]])
        raise CheckpointError(
            f"expected weights matching the checkpoint's model config, got a mismatch in {path}: {detail}"
        )
    model.load_state_dict(state)
    model.to(device).eval()
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return Checkpoint(
        model=model,
        config=config,
        normalization=normalization,
        metadata=header.get("metadata", {}),
        content_hash=header["content_sha256"],
        extra=extra,
        file_sha256=hashlib.sha256(data).hexdigest(),
    )
