"""Property-based fuzzing (Hypothesis) of the boundaries: planning, volume opening, metric
inputs and checkpoint headers either succeed with a valid result or raise the documented
error with an "expected …" message, never another exception, never unpickling."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.integers(min_value=-2, max_value=40)
triples = st.tuples(dims, dims, dims)


@FAST
@example(shape=(4, 48, 48), block=(2, 24, 24), chunk=None, model="tiny")  # a valid plan is checked
@example(shape=(5, 40, 40), block=None, chunk=(2, 8, 8), model="aniso3d")
@example(shape=(1, 1, 1), block=None, chunk=(0, 0, 0), model="tiny")  # was a ZeroDivisionError
@given(shape=triples, block=st.one_of(st.none(), triples), chunk=st.one_of(st.none(), triples),
       model=st.sampled_from(["tiny", "aniso3d"]))  # fmt: skip
def test_plan_tiles_the_volume_exactly_once_or_refuses(shape, block, chunk, model) -> None:
    from pipeline.plan import make_plan
    from unetcore.config import preset

    config = preset(model)
    try:
        plan = make_plan("in.zarr", "out.zarr", shape, config, block_shape=block, chunk_shape=chunk)
    except ValueError as exc:
        assert "expected" in str(exc).lower(), exc
        return
    planned.append(shape)
    cover = np.zeros(shape, np.int32)
    for i in range(plan.num_blocks):
        b = plan.block(i)
        cover[b.write_roi.to_slices()] += 1
        assert b.read_roi.contains(b.write_roi)
    assert (cover == 1).all()


planned: list = []


def test_the_plan_property_saw_valid_plans() -> None:
    """Runs after the property (file order): it did check tilings, not only refusals."""
    assert len(planned) >= 2


_BASE = tempfile.TemporaryDirectory(prefix="emunet-fuzz-")  # removed at interpreter exit


def _fuzz_dir() -> Path:
    return Path(tempfile.mkdtemp(dir=_BASE.name))


DTYPES = ["uint8", "uint16", "float32", "int8", "int64", "float64", "bool", "complex64"]


@FAST
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=5), dtype=st.sampled_from(DTYPES))
def test_open_volume_accepts_3d_supported_dtypes_only(shape, dtype) -> None:
    import zarr

    from pipeline.volume import UnsupportedVolumeError, open_volume

    path = _fuzz_dir() / "v.zarr"
    zarr.create_array(str(path), shape=tuple(shape), chunks=tuple(max(1, s) for s in shape), dtype=dtype)
    legal = len(shape) == 3 and dtype in ("uint8", "uint16", "float32")
    try:
        volume = open_volume(str(path))
    except UnsupportedVolumeError as exc:
        assert not legal and "expected" in str(exc)
        return
    assert legal and volume.shape == tuple(shape) and str(volume.dtype) == dtype


arrays = st.builds(
    lambda shape, dtype, fill: np.full(shape, fill).astype(dtype) if dtype != "bool" else np.full(shape, fill != 0),
    st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple),
    st.sampled_from(["uint8", "uint16", "float32", "float64", "int16", "int64", "bool", "complex64", "U1"]),
    st.sampled_from([0, 1, 2, -1, 0.5, 1.5, np.nan, np.inf, 255]),
)


@FAST
@given(pred=arrays, gt=arrays)
def test_metric_inputs_validate_or_raise_expected(pred, gt) -> None:
    from pipeline.metrics.inputs import validate_pair

    with np.errstate(all="ignore"):
        try:
            p, g = validate_pair(pred, gt)
        except ValueError as exc:
            assert "expected" in str(exc).lower(), exc
            return
    assert p.shape == g.shape and p.ndim == 3 and g.dtype == np.bool_
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def _header_bytes(n: int, body: bytes) -> bytes:
    return n.to_bytes(8, "little") + body


blobs = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, b: _header_bytes(n, b), st.integers(0, 300), st.binary(max_size=200)),
    st.builds(lambda n, t: _header_bytes(n, t.encode()), st.integers(0, 300), st.text(max_size=100)),
    st.builds(lambda proto: b"MARKER", st.integers(0, 5)),
)


@FAST
@given(blob=blobs, proto=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_read_header_on_random_bytes(blob, proto) -> None:
    from unetcore.checkpoint import CheckpointError, read_header

    folder = _fuzz_dir()
    marker = folder / "UNPICKLED"
    if blob == b"MARKER":
        blob = pickle.dumps({"x": _Marker(str(marker))}, protocol=proto)
    path = folder / "c.safetensors"
    path.write_bytes(blob)
    try:
        read_header(path)
    except (CheckpointError, FileNotFoundError) as exc:
        assert "expected" in str(exc)
    else:  # pragma: no cover - random bytes are never an emunet checkpoint
        pytest.fail(f"accepted random bytes {blob[:40]!r}")
    assert not marker.exists()
