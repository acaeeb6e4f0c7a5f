"""The optional cell mask as an OME-Zarr *label image*, so viewers show it as a label layer.

NGFF keeps label images in a ``labels`` group next to the image's arrays: the group lists
them (``labels``), each is a multiscale image with ``image-label`` metadata whose
``source.image`` points back at the image (``../../``). Written for NGFF 0.4 readers (top
level, with ``version``) and 0.5 readers (under ``ome``), as the image's own metadata is::

    OUT.zarr/
    ├── mask/             (z, y, x) uint8, the mask xarray opens (``ds["mask"]``)
    └── labels/
        ├── zarr.json     {"labels": ["mask"], "ome": {"version": "0.5", "labels": ["mask"]}}
        └── mask/
            ├── zarr.json {"multiscales": [...], "image-label": {...}, "ome": {...}}
            └── 0/        (z, y, x) uint8, the same values as ``mask/``

Why a copy and not a link: a multiscale's dataset ``path`` names a child array of its own
group (NGFF 0.4/0.5 "datasets"; ome-zarr-py opens ``labels/mask/<path>``), so the label
image cannot point at the root ``mask`` array, and moving ``mask`` under ``labels/`` would
take it away from ``xarray.open_zarr(OUT)`` (only root arrays are variables). The mask is
binary uint8 and compresses to a few percent of the probability array; both copies are
written by the same block, chunk for chunk (`pipeline.output.Output.write`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LABELS_GROUP = "labels"
MASK_LABEL = "mask"
MASK_LABEL_ARRAY = f"{LABELS_GROUP}/{MASK_LABEL}/0"  # the array a block writes
# 0 = membrane (transparent in a label layer), 1 = cell; NGFF wants the same label values in
# colors and properties
MASK_COLORS = [{"label-value": 0, "rgba": [0, 0, 0, 0]}, {"label-value": 1, "rgba": [0, 200, 255, 128]}]
MASK_PROPERTIES = [{"label-value": 0, "class": "membrane"}, {"label-value": 1, "class": "cell"}]


def image_label(version: str | None) -> dict[str, Any]:
    """The ``image-label`` metadata of the mask (``version`` only in the 0.4 form)."""
    meta: dict[str, Any] = {"colors": MASK_COLORS, "properties": MASK_PROPERTIES, "source": {"image": "../../"}}
    return {"version": version, **meta} if version else meta


def create_mask_labels(
    group: Any,
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    shards: Sequence[int] | None,
    voxel_size: Sequence[float],
    compressors: Any,
    attributes: dict[str, Any],
) -> None:
    """Create ``labels/`` and the mask's label image (``labels/mask/0``) in the output ``group``."""
    from pipeline.output import AXES, ome_attrs, ome_dataset, ome_multiscale

    labels = group.create_group(LABELS_GROUP)
    labels.attrs.update({"labels": [MASK_LABEL], "ome": {"version": "0.5", "labels": [MASK_LABEL]}})
    label = labels.create_group(MASK_LABEL)
    label.create_array(
        "0", shape=tuple(shape), chunks=tuple(chunks), shards=tuple(shards) if shards else None, dtype="uint8",
        fill_value=0, dimension_names=AXES, compressors=compressors, attributes=attributes,
    )  # fmt: skip
    meta = ome_attrs([ome_multiscale(MASK_LABEL, [ome_dataset("0", voxel_size)])])
    meta["image-label"] = image_label("0.4")
    meta["ome"]["image-label"] = image_label(None)
    label.attrs.update(meta)


__all__ = ["LABELS_GROUP", "MASK_LABEL", "MASK_LABEL_ARRAY", "create_mask_labels", "image_label"]
