"""The output store: a Zarr v3 group that viewers (OME-Zarr) and analysts (xarray) open.

Layout of ``OUT.zarr`` (all arrays Zarr v3, zstd-compressed)::

    OUT.zarr/
    ├── zarr.json             group attrs: OME multiscales (0.4 style, and 0.5 under "ome"),
    │                         "emunet" provenance (version, checkpoint SHA-256, model config,
    │                         input URL, time, plan with block shape)
    ├── probability/          (z, y, x) uint8 = round(p·255) (or float16/float32), chunks = the
    │                         plan's chunks (sub-chunks inside shards if sharded)
    ├── mask/                 optional (z, y, x) uint8, 1 where p ≥ 0.5
    ├── labels/mask/0         the same mask as an OME-Zarr label image (`pipeline.labels`)
    ├── z/ y/ x/              1-D float64 coordinates in nm (voxel centres = index·voxel size),
    │                         dimension_names ("z",) … so xarray shows physical coordinates
    ├── pyramid/probability/1 … n   optional 2× (y, x) mean levels for viewers
    └── ledger/               resume ledger (see `pipeline.ledger`)

Every array has ``dimension_names`` so ``xarray.open_zarr(OUT, consolidated=False)`` gives
dims (z, y, x). Credentials (``storage_options``) are never written.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.chunkwrite import ChunkWriter, ZarrWriter, writer_for
from pipeline.dtypes import OUTPUT_DTYPES
from pipeline.geometry import Roi
from pipeline.labels import LABELS_GROUP, MASK_LABEL_ARRAY, create_mask_labels
from pipeline.ownership import OutputExistsError, check_output, link_target, remove_ours
from pipeline.plan import SegmentPlan
from pipeline.resume import PlanMismatchError, check_input_unchanged, check_resume, record_mismatch
from pipeline.volume import fsspec_filesystem, is_remote, local_path, redact_url

AXES = ("z", "y", "x")
LEDGER_GROUP = "ledger"
# Every chunk is written, even one that equals the fill value (zarr skips those by default),
# so that a chunk missing from an emunet store is an error, never a silent zero.
DENSE = {"write_empty_chunks": True}
PYRAMID_GROUP = "pyramid"
INSTANCE_NODES = ("fragments", "neuron_ids", "instances", "scratch")  # what agglomerate (and weights) add later


@dataclass(frozen=True)
class OutputOptions:
    """What the output holds."""

    name: str = "probability"  # the probability array's name
    dtype: str = "uint8"  # "uint8" = round(p·255), "float16" or "float32" = p
    mask: bool = False  # also write "mask": uint8 1 where p ≥ mask_threshold
    mask_threshold: float = 0.5
    compression_level: int = 3  # zstd level

    def __post_init__(self) -> None:
        if self.dtype not in OUTPUT_DTYPES:
            raise ValueError(f"expected an output dtype in {OUTPUT_DTYPES}, got {self.dtype!r}")
        reserved = (*AXES, "mask", LEDGER_GROUP, PYRAMID_GROUP, LABELS_GROUP, *INSTANCE_NODES)
        if not self.name or "/" in self.name or self.name in reserved:
            raise ValueError(f"expected a plain array name other than {'/'.join(reserved)}, got {self.name!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"expected a mask threshold in (0, 1), got {self.mask_threshold}")


# --------------------------------------------------------------------------- OME helpers


def ome_axes() -> list[dict[str, str]]:
    return [{"name": a, "type": "space", "unit": "nanometer"} for a in AXES]


def ome_dataset(path: str, voxel_size: Sequence[float], factor: Sequence[int] = (1, 1, 1)) -> dict[str, Any]:
    """One multiscale level: its scale, and the half-voxel shift of a mean-downsampled level."""
    scale = [float(v) * f for v, f in zip(voxel_size, factor, strict=True)]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if any(f != 1 for f in factor):
        shift = [float(v) * (f - 1) / 2 for v, f in zip(voxel_size, factor, strict=True)]
        transforms.append({"type": "translation", "translation": shift})
    return {"path": path, "coordinateTransformations": transforms}


def ome_multiscale(name: str, datasets: list[dict[str, Any]], *, kind: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"version": "0.4", "name": name, "axes": ome_axes(), "datasets": datasets}
    if kind:
        entry["type"] = kind
    return entry


def ome_attrs(multiscales: list[dict[str, Any]]) -> dict[str, Any]:
    """Group attributes for NGFF 0.4 readers (top level) and 0.5 readers (``ome``)."""
    v05 = [{k: v for k, v in m.items() if k != "version"} for m in multiscales]
    return {"multiscales": multiscales, "ome": {"version": "0.5", "multiscales": v05}}


def zstd(level: int = 3) -> Any:
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=level)


def write_coordinates(group: Any, shape: Sequence[int], voxel_size: Sequence[float]) -> None:
    """1-D float64 ``z``, ``y``, ``x`` arrays in nm (voxel centres at index·voxel size)."""
    for axis, n, v in zip(AXES, shape, voxel_size, strict=True):
        coord = group.create_array(
            axis,
            shape=(int(n),),
            chunks=(min(int(n), 1 << 20),),
            dtype="float64",
            dimension_names=(axis,),
            attributes={"units": "nanometer", "long_name": f"{axis} (voxel centre)"},
            compressors=zstd(),
            overwrite=True,
        )
        coord[:] = np.arange(int(n), dtype=np.float64) * float(v)


# --------------------------------------------------------------------------- stores


def store_exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = fsspec_filesystem(url, storage_options)
    return bool(fs.exists(path))


def remove_store(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    fs, path = fsspec_filesystem(url, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def open_group(url: str, mode: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    import zarr

    remote = is_remote(url)
    try:
        return zarr.open_group(
            store=url if remote else local_path(url),
            mode=mode,
            zarr_format=3 if mode in ("w", "w-", "a") else None,
            storage_options=dict(storage_options) if remote and storage_options else None,
        )
    except FileNotFoundError:
        raise FileNotFoundError(
            f"expected a Zarr group at {redact_url(url)}, got nothing there (or no group metadata)"
        ) from None


def to_output_dtype(probability: np.ndarray, dtype: str) -> np.ndarray:
    """float32 probability → the stored dtype (uint8: round(p·255), clipped)."""
    if dtype == "uint8":
        return np.clip(np.rint(probability * np.float32(255)), 0, 255).astype(np.uint8)
    return probability.astype(dtype)


def from_output_dtype(stored: np.ndarray) -> np.ndarray:
    """Stored values → float32 probability."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255)
    return stored.astype(np.float32)


# --------------------------------------------------------------------------- the output


@dataclass
class Output:
    """An opened output group; `write` puts one block's probabilities in place."""

    url: str
    group: Any = field(repr=False)
    plan: SegmentPlan
    options: OutputOptions
    _arrays: dict[str, Any] = field(default_factory=dict, repr=False)

    _writers: dict[str, ChunkWriter | ZarrWriter] = field(default_factory=dict, repr=False)

    def array(self, name: str) -> Any:
        if name not in self._arrays:
            self._arrays[name] = self.group[name].with_config(DENSE)
        return self._arrays[name]

    def put(self, name: str, roi: Roi, data: np.ndarray) -> None:
        """Store ``data`` in the whole chunks of ``roi`` of array ``name``: encoded in this
        thread where `pipeline.chunkwrite` can (a local store), through zarr otherwise."""
        if name not in self._writers:
            self._writers[name] = writer_for(self.array(name))
        self._writers[name].write(roi, data)

    def device_dtype(self, predictor: Any = None) -> str:
        """The dtype a block's prediction may arrive in: "uint8" (quantised on the predictor's
        device, `unetcore.predict.quantize_uint8`) when that is what is stored and no mask
        needs the float probability, and ``predictor`` is a `TilePredictor`; else "float32"."""
        # Called per block: no import statement (it takes the import lock every time). A
        # TilePredictor exists only once its module has been imported.
        predict = sys.modules.get("unetcore.predict")
        tile_predictor = predict is not None and isinstance(predictor, predict.TilePredictor)
        return "uint8" if self._takes_uint8 and tile_predictor else "float32"

    @property
    def _takes_uint8(self) -> bool:
        return self.options.dtype == "uint8" and not self.options.mask

    def write(self, roi: Roi, probability: np.ndarray) -> None:
        """Write the probabilities of ``roi`` (chunk-aligned: whole chunks only): float32, or
        uint8 already quantised where `device_dtype` allows it."""
        if tuple(probability.shape) != tuple(roi.shape):
            raise ValueError(f"expected a result of shape {tuple(roi.shape)} for {roi}, got {probability.shape}")
        if probability.dtype == np.uint8:
            if not self._takes_uint8:
                raise ValueError(f"expected float32 probabilities for a {self.options.dtype} output"
                                 f"{' with a mask' if self.options.mask else ''}, got uint8")
            self.put(self.options.name, roi, probability)
            return
        self.put(self.options.name, roi, to_output_dtype(probability, self.options.dtype))
        if self.options.mask:
            mask = (probability >= np.float32(self.options.mask_threshold)).astype(np.uint8)
            self.put("mask", roi, mask)
            if MASK_LABEL_ARRAY in self._arrays or MASK_LABEL_ARRAY in self.group:  # older outputs lack it
                self.put(MASK_LABEL_ARRAY, roi, mask)

    def read(self, roi: Roi | None = None) -> np.ndarray:
        """Stored probabilities of ``roi`` (default: everything) as float32."""
        roi = roi or self.plan.total_roi
        return from_output_dtype(np.asarray(self.array(self.options.name)[roi.to_slices()]))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs.asdict())


def provenance(
    plan: SegmentPlan,
    options: OutputOptions,
    model_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``emunet`` attribute: what produced this output (no credentials, ever)."""
    from pipeline.version import package_version

    safe_plan = plan.to_dict()
    safe_plan["input_url"] = redact_url(plan.input_url)
    safe_plan["output_url"] = redact_url(plan.output_url)
    return {
        "version": package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input_url": redact_url(plan.input_url),
        "checkpoint_sha256": plan.checkpoint_sha256,
        "model_config": dict(model_config) if model_config is not None else None,
        "block_shape": list(plan.block_shape),
        "voxel_size_nm": list(plan.voxel_size),
        "plan": safe_plan,
        "output": asdict(options),
        **dict(extra or {}),
    }


def _array_attrs(name: str, dtype: str, options: OutputOptions) -> dict[str, str]:
    if name == "mask":
        return {"long_name": f"cell mask (probability >= {options.mask_threshold})", "values": "0 = membrane, 1 = cell"}
    stored = "round(p * 255)" if dtype == "uint8" else "p"
    return {"long_name": "cell probability p (class 1 of the softmax)", "stored_as": stored}


def create_output(
    plan: SegmentPlan,
    options: OutputOptions = OutputOptions(),
    *,
    model_config: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    reads: Sequence[str] = (),
    allow_mismatch: bool = False,
) -> Output:
    """Create (or, with ``resume``, reopen after checking the plan) the output group.

    The output may never be, contain or lie inside the input or anything in ``reads``
    (`pipeline.ownership`). An existing output is refused (`OutputExistsError`) unless
    ``resume`` (the stored plan and settings must match, `pipeline.resume`:
    `PlanMismatchError` names what differs; ``allow_mismatch`` lets differing settings
    through and records them in the provenance) or ``overwrite`` (replaced only if
    emunet wrote it: `NotOursError` otherwise).
    """
    url = link_target(plan.output_url)  # a symlinked output is written where the link points
    if resume and overwrite:
        raise ValueError("expected at most one of resume and overwrite, got both")
    existing = check_output(url, reads=(plan.input_url, *reads), overwrite=overwrite, resume=resume,
                            storage_options=storage_options, kind="segment")
    if existing.exists:
        if resume:
            group = open_group(url, "r+", storage_options)
            diffs = check_resume(url, dict(group.attrs.asdict()), plan, options, extra_attrs, allow_mismatch=allow_mismatch)
            if diffs:
                record_mismatch(group, diffs)
            return Output(url, group, plan, options)
        remove_ours(url, storage_options)
    group = _create_exclusively(url, storage_options)
    shape = plan.volume_shape
    arrays = [(options.name, options.dtype)] + ([("mask", "uint8")] if options.mask else [])
    for name, dtype in arrays:
        group.create_array(
            name,
            shape=shape,
            chunks=plan.chunk_shape,
            shards=plan.shard_shape,
            dtype=dtype,
            fill_value=0,
            dimension_names=AXES,
            compressors=zstd(options.compression_level),
            attributes=_array_attrs(name, dtype, options),
        )
    if options.mask:
        create_mask_labels(
            group, shape=shape, chunks=plan.chunk_shape, shards=plan.shard_shape, voxel_size=plan.voxel_size,
            compressors=zstd(options.compression_level), attributes=_array_attrs("mask", "uint8", options),
        )  # fmt: skip
    write_coordinates(group, shape, plan.voxel_size)
    ledger = group.create_group(LEDGER_GROUP)
    ledger.attrs.update({"layout": "one marker object per block: done/<id // 10000>/<id>, failed/<id>.json", "num_blocks": plan.num_blocks})
    multiscales = [ome_multiscale(options.name, [ome_dataset(options.name, plan.voxel_size)])]
    if options.mask:
        multiscales.append(ome_multiscale("mask", [ome_dataset("mask", plan.voxel_size)]))
    group.attrs.update(ome_attrs(multiscales) | {"emunet": provenance(plan, options, model_config, extra_attrs)})
    return Output(url, group, plan, options)


CLAIM = ".emunet-claim"  # object an S3 output is claimed with (a conditional PUT)


def _create_exclusively(url: str, storage_options: Mapping[str, Any] | None) -> Any:
    """Create the output group so that of two runs racing for one path only one wins.

    Locally the store's directory is made with an atomic ``mkdir`` (it fails if another
    run made it first). On S3 the output is first claimed with a conditional PUT of
    ``CLAIM`` (``If-None-Match: *``: S3 refuses it with 412 when the object exists, which
    s3fs raises as `FileExistsError`). Other object stores get zarr's "w-" mode (refuse an
    existing group), which narrows the window as far as the store allows.
    """
    if is_remote(url):
        from zarr.errors import ContainsArrayError, ContainsGroupError

        try:
            if _claim(url, storage_options):  # ours alone now; "a" keeps the claim object
                return open_group(url, "a", storage_options)
            return open_group(url, "w-", storage_options)
        except (FileExistsError, ContainsGroupError, ContainsArrayError) as exc:
            raise _raced(url) from exc
    try:
        Path(local_path(url)).mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise _raced(url) from None
    return open_group(url, "w", storage_options)


def _claim(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Claim an S3 output atomically (True), or say that the store cannot (False).

    The claim carries a token: a conditional PUT retried after its reply was lost gets 412
    for our own object, so a refusal is ours when the stored token is. A store that rejects
    the header (not S3 itself: some S3-compatible servers) falls back to "w-" (False).
    """
    import json
    import logging
    import uuid

    fs, path = fsspec_filesystem(url, storage_options)
    if "s3" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return False
    claim, token = f"{path.rstrip('/')}/{CLAIM}", uuid.uuid4().hex
    body = json.dumps({"token": token, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    try:
        fs.pipe_file(claim, body.encode(), IfNoneMatch="*")
    except FileExistsError:
        if token not in fs.cat_file(claim).decode(errors="replace"):
            raise
    except Exception as exc:  # the header not supported here
        logging.getLogger(__name__).warning("conditional PUT refused at %s (%s): creating with zarr's 'w-'", redact_url(url), exc)
        return False
    return True


def _raced(url: str) -> OutputExistsError:
    return OutputExistsError(
        f"expected to create the output at {redact_url(url)}, got one that another run created "
        "at the same moment; run one segmentation per output (or pass --resume to join it)"
    )


def load_plan(url: str, storage_options: Mapping[str, Any] | None = None) -> SegmentPlan:
    """The plan stored in an output's attributes (with the credential-free URLs)."""
    group = open_group(url, "r", storage_options)
    meta = dict(group.attrs.asdict()).get("emunet") or {}
    if "plan" not in meta:
        raise ValueError(f"expected an emunet output at {redact_url(url)}, got a store without an emunet plan")
    return SegmentPlan.from_dict(meta["plan"])


def open_output(url: str, *, mode: str = "r+", storage_options: Mapping[str, Any] | None = None) -> Output:
    """Reopen an output (e.g. on a worker) from its URL; plan and options from its attrs."""
    group = open_group(url, mode, storage_options)
    meta = dict(group.attrs.asdict()).get("emunet") or {}
    if "plan" not in meta:
        raise ValueError(f"expected an emunet output at {redact_url(url)}, got a store without an emunet plan")
    plan = SegmentPlan.from_dict(meta["plan"])
    options = OutputOptions(**meta.get("output", {}))
    return Output(url, group, plan, options)


__all__ = [
    "AXES",
    "Output",
    "OutputExistsError",
    "OutputOptions",
    "PlanMismatchError",
    "check_input_unchanged",
    "create_output",
    "load_plan",
    "open_output",
]
