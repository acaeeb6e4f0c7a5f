"""What a command may write over: only what emunet wrote, never what it reads.

A user's data is never deleted or changed by a command that did not create it. Before a
command writes OUT it checks three things, for local paths, ``file://`` and fsspec URLs
(``s3://``) alike::

    OUT == an input, or OUT inside an input's store    refused, with or without --overwrite
    OUT contains an input (or the checkpoint)           refused, with or without --overwrite
    something already at OUT                            refused without --overwrite; with it,
                                                        replaced only if emunet wrote it

"emunet wrote it" is read from the store's own metadata: a Zarr group whose root
attributes carry an ``emunet`` (or ``emunet_import``) object, holding nothing else at its
top level than Zarr metadata and the Zarr nodes emunet writes (`EMUNET_MEMBERS`). A
directory of the user's files, a Zarr store of someone else's, a regular file, or an emunet
store into which the user put files or Zarr nodes of their own is left alone, and the
message says what is there. The error for an existing output
suggests ``--overwrite`` only when the flag would be accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.n5 import split_n5
from pipeline.volume import fsspec_filesystem, is_remote, local_path, redact_url, split_url
from unetcore.io import split_hdf5

ZARR_METADATA = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata", ".emunet-claim"})
SHOWN = 5  # foreign entries named in a message
# The Zarr nodes emunet writes at a store's top level: the probability array (its name is in
# the root metadata), mask, ledger, pyramid, OME-Zarr labels, instance fragments/neuron_ids
# and their graph, weight maps (and the scratch labels of a stopped run), the coordinate
# arrays, and multiscale levels "0", "1", ….
EMUNET_MEMBERS = frozenset({"probability", "mask", "ledger", "pyramid", "labels", "fragments", "neuron_ids", "instances", "weights",
                            "scratch", "x", "y", "z"})  # fmt: skip


class OutputExistsError(FileExistsError):
    """The output exists and neither resume nor overwrite was asked for."""


class NotOursError(FileExistsError):
    """``--overwrite`` of something emunet did not write (a user's files, a foreign store)."""


class OutputIsInputError(ValueError):
    """The output is, contains, or lies inside something the command reads."""


@dataclass(frozen=True)
class Existing:
    """What is at a path: nothing, a file, or a directory/prefix (and whether emunet wrote it)."""

    kind: str  # "none", "file", "store"
    ours: bool = False  # a store whose metadata says emunet wrote it, with nothing foreign in it
    detail: str = ""  # what is there, for messages
    store_kind: str | None = None  # which command's store (`store_kind`), where emunet's metadata says

    @property
    def exists(self) -> bool:
        return self.kind != "none"


def store_kind(attrs: Mapping[str, Any] | None) -> str | None:
    """Which emunet command wrote a store, from its root attributes: "segment", "weights",
    "import", the demo's "demo-…", "emunet" (emunet's, of no known kind), or None (not emunet's)."""
    if not attrs:
        return None
    if isinstance(attrs.get("emunet_import"), dict):
        return "import"
    meta = attrs.get("emunet")
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("kind"), str):
        return str(meta["kind"])
    return "weights" if "weights" in meta else "segment" if "plan" in meta else "emunet"


RESUMABLE = ("segment",)  # the kinds whose command has --resume
KIND_NAMES = {"segment": "an `emunet segment` output", "weights": "a weight map `emunet weights` wrote",
              "import": "a volume `emunet import` wrote", "emunet": "an emunet store"}


IMAGES = frozenset({"import", "demo-image", "demo-labels"})  # volumes to read: the demo imports its input too


def _same_kind(found: str, wanted: str) -> bool:
    return found == wanted or (found in IMAGES and wanted in IMAGES)


def describe_kind(kind: str | None) -> str:
    """A store kind in words, for messages."""
    if kind is not None and kind.startswith("demo-"):
        return f"the demo's {kind[5:]}"
    return KIND_NAMES.get(str(kind), "a store emunet did not write")


def _key(url: str) -> tuple[str, str]:
    """(protocol, normalised absolute path) of a local path or URL, to compare locations."""
    url = str(url)
    if is_remote(url):
        protocol, _, rest = url.partition("://")
        rest = redact_url(url).partition("://")[2]
        return protocol, "/" + rest.strip("/")
    return "file", os.path.realpath(os.path.abspath(local_path(url)))


def same_location(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same place: a path and its ``file://`` URL, a symlink and its
    target, a relative and an absolute path (URLs compare without credentials)."""
    return _key(a) == _key(b)


def _within(inner: tuple[str, str], outer: tuple[str, str]) -> bool:
    """``inner`` is ``outer`` or lies below it."""
    if inner[0] != outer[0]:
        return False
    a, b = inner[1].rstrip("/") or "/", outer[1].rstrip("/") or "/"
    return a == b or a.startswith(b if b.endswith("/") else b + "/")


def _hierarchy_root(path: str) -> str:
    """The top of the local Zarr hierarchy ``path`` lies in (its highest ancestor that is a
    Zarr group): a store need not be named ``*.zarr``."""
    root = os.path.abspath(path)
    while True:
        parent = os.path.dirname(root)
        if parent == root or not any(os.path.isfile(os.path.join(parent, m)) for m in ("zarr.json", ".zgroup")):
            return root
        root = parent


def check_not_an_input(output_url: str, reads: Iterable[str | os.PathLike[str] | None], *, what: str = "OUT") -> None:
    """Refuse an output that is, contains, or lies inside a store or file the command reads.

    ``reads``: the inputs (volume URLs with an array path are reduced to their store), the
    checkpoint, a ground truth. Writing inside an input's store changes the input; an
    output that contains an input would delete it on ``--overwrite``.
    """
    out = _key(output_url)
    for read in reads:
        if read is None or str(read) == "":
            continue
        store, _ = split_url(str(read))
        if not is_remote(store):
            store = str(split_hdf5(store)[0])  # file.h5:/dataset → file.h5
            if ".n5:" in store or ".n5/" in store:
                store = str(split_n5(store)[0])  # container.n5:dataset → container.n5
            store = _hierarchy_root(local_path(store))  # mydata/raw → mydata, a Zarr group of any name
        src = _key(store)
        if _within(out, src):
            relation = "is" if out == src else "lies inside"
            raise OutputIsInputError(
                f"expected {what} apart from what this command reads, got {redact_url(str(output_url))}, which "
                f"{relation} the input {redact_url(str(read))}; write the output to another path (emunet never "
                "writes into its inputs)"
            )
        if _within(src, out):
            raise OutputIsInputError(
                f"expected {what} apart from what this command reads, got {redact_url(str(output_url))}, which "
                f"contains the input {redact_url(str(read))}; write the output to another path (replacing it "
                "would delete the input)"
            )


def _root_attrs(fs: Any, path: str) -> dict[str, Any] | None:
    """The root node's attributes (Zarr v3 ``zarr.json``, v2 ``.zattrs``/``.zarray``/``.zgroup``),
    or None where there is no Zarr metadata at all."""
    for name in ("zarr.json", ".zattrs", ".zgroup", ".zarray"):
        try:
            raw = fs.cat_file(f"{path.rstrip('/')}/{name}")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            continue
        try:
            meta = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        if not isinstance(meta, dict):
            return {}
        if name == "zarr.json":
            attrs = meta.get("attributes") if meta.get("node_type") == "group" else None
            return attrs if isinstance(attrs, dict) else {}
        return meta if name == ".zattrs" else {}
    return None


def _foreign_entries(fs: Any, path: str, members: frozenset[str] | None = None) -> list[str]:
    """Top-level names in the store that are neither Zarr metadata nor Zarr nodes (with
    ``members``: nor Zarr nodes of those names or multiscale levels; others are the user's)."""
    foreign = []
    for entry in fs.ls(path, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if name in ZARR_METADATA:
            continue
        if entry.get("type") == "directory" and (members is None or name in members or name.isdigit()):
            child = f"{path.rstrip('/')}/{name}"
            if any(fs.exists(f"{child}/{m}") for m in ("zarr.json", ".zarray", ".zgroup")):
                continue
        foreign.append(name)
    return sorted(foreign)


def _members(attrs: Mapping[str, Any]) -> frozenset[str]:
    """The top-level nodes an emunet store may hold: `EMUNET_MEMBERS` and its output's array name."""
    meta = attrs.get("emunet")  # an `emunet_import` store has none
    output = meta.get("output") if isinstance(meta, dict) else None
    name = output.get("name") if isinstance(output, dict) else None
    return EMUNET_MEMBERS | ({name} if isinstance(name, str) and name else set())


def inspect(url: str, storage_options: Mapping[str, Any] | None = None) -> Existing:
    """What is at ``url``, and whether emunet wrote it (see the module docstring)."""
    fs, path = fsspec_filesystem(str(url), storage_options)
    if not fs.exists(path):
        return Existing("none")
    if not fs.isdir(path):
        return Existing("file", False, "a file")
    attrs = _root_attrs(fs, path)
    kind = store_kind(attrs)
    ours = kind is not None
    foreign = _foreign_entries(fs, path, _members(attrs) if ours else None)
    listed = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
    if attrs is None:
        if not foreign:
            return Existing("store", False, "an empty directory" if not fs.ls(path) else "a Zarr store without group metadata")
        return Existing("store", False, f"a directory that is not an emunet output (it holds {listed})")
    if not ours:
        return Existing("store", False, "a Zarr store that emunet did not write (no emunet metadata)")
    if foreign:
        return Existing("store", False, f"an emunet output that also holds other files ({listed})", kind)
    return Existing("store", True, describe_kind(kind), kind)


def store_attrs_at(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The root attributes of the Zarr store ``url`` lies in (`store_kind` reads them), or None
    where that is no Zarr store (a file, nothing)."""
    fs, path = fsspec_filesystem(split_url(str(url))[0], storage_options)
    return _root_attrs(fs, path) if fs.isdir(path) else None


def check_em_input(url: str, storage_options: Mapping[str, Any] | None = None, *, what: str = "an EM volume to segment",
                   values: str = "grey levels") -> None:
    """Refuse an input that emunet made as an output (a probability map, a weight map) where
    data is read (EM to segment or train on, labels): its values are a model's, not
    ``values``, and whatever is computed from them looks plausible."""
    kind = store_kind(store_attrs_at(url, storage_options))
    if kind in ("segment", "weights"):
        raise ValueError(
            f"expected {what}, got {redact_url(str(url))}, {describe_kind(kind)} (its values are not {values}); "
            "check the order of the arguments"
        )


def check_output(
    output_url: str,
    *,
    reads: Sequence[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    kind: str | None = None,
) -> Existing:
    """Check that ``output_url`` may be written (and, with ``overwrite``, replaced).

    Returns what is there. Raises `OutputIsInputError`, `OutputExistsError` (something is
    there and neither flag was given) or `NotOursError` (``overwrite`` of something emunet
    did not write). ``resume`` leaves the existing store to the caller's plan check.
    ``kind`` (`store_kind`): what the command writes; a store of another emunet command
    (say an import, from a segmentation's swapped arguments) is neither replaced nor resumed.
    """
    check_not_an_input(output_url, reads)
    existing = inspect(output_url, storage_options)
    where = redact_url(str(output_url))
    if existing.store_kind is not None and kind is not None and not _same_kind(existing.store_kind, kind):
        other = describe_kind(existing.store_kind)
        if overwrite:
            raise NotOursError(
                f"expected --overwrite to replace {describe_kind(kind)} at {where}, got {other}; --overwrite "
                "replaces only an output of the same command: choose another output path"
            )
        wanted = f"{describe_kind(kind)} to resume at {where}" if resume else f"no output at {where}"
        raise OutputExistsError(f"expected {wanted}, got {other}; choose another output path")
    if not existing.exists or resume:
        return existing
    if existing.kind == "store" and existing.detail == "an empty directory":
        if overwrite:
            return existing  # nothing to lose
        raise OutputExistsError(f"expected no output at {where}, got an empty directory; remove it or choose another path")
    if not overwrite:
        if existing.ours:
            flags = ("pass --resume (resume=True) to continue it or --overwrite (overwrite=True) to replace it"
                     if kind in (None, *RESUMABLE) else "pass --overwrite (overwrite=True) to replace it")
            raise OutputExistsError(f"expected no output at {where}, got an existing emunet output; {flags}")
        raise OutputExistsError(f"expected no output at {where}, got {existing.detail}; choose another output path")
    if not existing.ours:
        raise NotOursError(
            f"expected --overwrite to replace an emunet output at {where}, got {existing.detail}; emunet replaces "
            "only what it wrote: choose another output path, or move that data away yourself"
        )
    return existing


def remove_ours(output_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete an output after `check_output(overwrite=True)` accepted it, unless a live run
    still writes it (`pipeline.runlock.OutputBusyError`: two runs would mix their blocks)."""
    from pipeline.runlock import check_free

    check_free(str(output_url), storage_options)
    fs, path = fsspec_filesystem(link_target(str(output_url)), storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def link_target(url: str) -> str:
    """A local output that is a symlink (say onto a larger disk) → the path it points to, so
    that replacing the output replaces the store there and keeps the link; anything else as is."""
    if is_remote(url) or not os.path.islink(local_path(url).rstrip("/")):
        return url
    return os.path.realpath(local_path(url).rstrip("/"))


__all__ = [
    "Existing",
    "NotOursError",
    "OutputExistsError",
    "OutputIsInputError",
    "check_em_input",
    "check_not_an_input",
    "check_output",
    "describe_kind",
    "inspect",
    "link_target",
    "remove_ours",
    "same_location",
    "store_attrs_at",
    "store_kind",
]
