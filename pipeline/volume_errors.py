"""The errors of opening and reading volumes (`pipeline.volume`), each a subclass of the
standard error callers already catch."""

from __future__ import annotations


class VolumeNotFoundError(FileNotFoundError):
    """Nothing exists at the volume's URL (or at the array path inside it)."""


class NotAZarrError(ValueError):
    """Something exists at the URL, but it is not a Zarr array or group."""


class UnsupportedVolumeError(ValueError):
    """A Zarr array that is not a 3D (z, y, x) uint8/uint16/float32 volume."""


class MissingChunkError(ValueError):
    """A chunk inside the array's extent is absent from the store (and sparse was not set)."""


__all__ = ["MissingChunkError", "NotAZarrError", "UnsupportedVolumeError", "VolumeNotFoundError"]
