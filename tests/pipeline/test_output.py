"""The output group: xarray dims and physical coords, OME metadata, provenance without
credentials, refusal/resume/overwrite of existing outputs, dtypes, the mask (and its OME-Zarr
label image, read by ome-zarr-py), the pyramid, and the code of docs/viewers.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.ownership import Existing
import xarray as xr
import zarr

from pipeline.geometry import Roi
from pipeline.output import (
    OutputExistsError,
    OutputOptions,
    PlanMismatchError,
    create_output,
    load_plan,
    open_output,
    to_output_dtype,
)
from pipeline.plan import make_plan
from pipeline.pyramid import write_pyramid
from pipeline.volume import multiscales_of, open_volume
from tests.pipeline.conftest import SECRET
from unetcore.config import preset

TINY = preset("tiny")
SHAPE = (3, 40, 56)
VOXEL = (50.0, 4.0, 4.0)


def plan_for(out: str, **kw):
    args = dict(block_shape=(1, 16, 16), voxel_size=VOXEL, checkpoint_sha256="c0ffee" * 10 + "abcd")
    args.update(kw)
    return make_plan("/data/in.zarr", out, SHAPE, TINY, **args)


def fill(output, plan) -> np.ndarray:
    p = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    for block_id in plan.block_ids():
        roi = plan.block(block_id).write_roi
        output.write(roi, p[roi.to_slices()])
    return p


def test_xarray_opens_dims_and_physical_coordinates(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    output = create_output(plan, OutputOptions(mask=True), model_config=TINY.to_dict())
    p = fill(output, plan)
    # --- the snippet in docs/pipeline.md -------------------------------------------------
    ds = xr.open_zarr(out, consolidated=False)
    prob = ds["probability"]  # uint8: round(p · 255)
    assert prob.dims == ("z", "y", "x")
    cell = prob.sel(z=100.0, method="nearest").isel(y=slice(0, 10)) / 255.0  # z in nm
    # -------------------------------------------------------------------------------------
    assert cell.shape == (10, 56)
    np.testing.assert_allclose(ds["y"].values, np.arange(40) * 4.0)
    np.testing.assert_allclose(ds["z"].values, [0.0, 50.0, 100.0])
    assert ds["x"].dtype == np.float64 and ds["x"].attrs["units"] == "nanometer"
    np.testing.assert_array_equal(prob.values, to_output_dtype(p, "uint8"))
    np.testing.assert_array_equal(ds["mask"].values, (p >= 0.5).astype(np.uint8))
    assert set(ds.data_vars) == {"probability", "mask"}
    da = xr.open_dataarray(out, engine="zarr", consolidated=False, drop_variables=["mask"])
    assert da.dims == ("z", "y", "x") and float(da["x"][1]) == 4.0


def test_ome_metadata_and_provenance(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    create_output(plan, model_config=TINY.to_dict())
    group = zarr.open_group(out, mode="r")
    attrs = group.attrs.asdict()
    (multiscale,) = multiscales_of(attrs)
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert multiscale["datasets"] == [{"path": "probability", "coordinateTransformations": [{"type": "scale", "scale": list(VOXEL)}]}]
    meta = attrs["emunet"]
    from emunet import __version__

    assert meta["version"] == __version__ and meta["checkpoint_sha256"] == plan.checkpoint_sha256
    assert meta["model_config"] == TINY.to_dict() and meta["input_url"] == "/data/in.zarr"
    assert meta["block_shape"] == [1, 16, 16] and "created" in meta
    assert load_plan(out) == plan
    assert group["probability"].chunks == (1, 16, 16) and group["probability"].dtype == np.uint8
    # a viewer (or this package) can open the output as an OME-Zarr image
    v = open_volume(out)
    assert v.shape == SHAPE and v.voxel_size == VOXEL


def test_existing_output_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    create_output(plan_for(out))
    with pytest.raises(OutputExistsError, match="--resume.*--overwrite") as err:
        create_output(plan_for(out))
    assert isinstance(err.value, FileExistsError)
    create_output(plan_for(out), resume=True)
    create_output(plan_for(out, block_shape=(1, 8, 8)), overwrite=True)
    assert load_plan(out).block_shape == (1, 8, 8)


def test_resume_with_a_different_plan_names_what_differs(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    create_output(plan_for(out))
    with pytest.raises(PlanMismatchError, match=r"checkpoint_sha256: stored .*block_shape") as err:
        create_output(plan_for(out, checkpoint_sha256="0" * 64, block_shape=(1, 8, 8)), resume=True)
    assert "input_url" not in str(err.value)
    with pytest.raises(PlanMismatchError, match="output dtype"):
        create_output(plan_for(out), OutputOptions(dtype="float16"), resume=True)
    (tmp_path / "other.zarr").mkdir()
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(PlanMismatchError, match="without emunet provenance"):
        create_output(plan_for(str(tmp_path / "other.zarr")), resume=True)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_float_outputs(tmp_path: Path, dtype: str) -> None:
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    output = create_output(plan, OutputOptions(dtype=dtype))
    p = fill(output, plan)
    np.testing.assert_allclose(open_output(out).read(), p, atol=1e-3 if dtype == "float16" else 0)


def test_uint8_is_rounded_probability() -> None:
    p = np.array([0.0, 0.0019, 0.002, 0.5, 0.999, 1.0], np.float32)
    np.testing.assert_array_equal(to_output_dtype(p, "uint8"), [0, 0, 1, 128, 255, 255])


def test_the_device_quantiser_gives_the_stored_bytes() -> None:
    """`unetcore.predict.quantize_uint8` (torch, on the predictor's device) and the stored
    rule (numpy) agree byte for byte: ties at (k + 0.5)/255 round to even in both, the ends
    clip, and a million random probabilities match."""
    import torch

    from unetcore.predict import quantize_uint8

    k = np.arange(256, dtype=np.float32)
    ties = (k + np.float32(0.5)) / np.float32(255)
    edges = np.concatenate([k / np.float32(255), ties, np.nextafter(ties, 0), np.nextafter(ties, 1),
                            np.array([0.0, 1.0, -0.0, 1e-9, 1 - 1e-7], np.float32)]).astype(np.float32)
    rand = np.random.default_rng(0).random(1_000_000, dtype=np.float32)
    for p in (edges, rand):
        np.testing.assert_array_equal(quantize_uint8(torch.from_numpy(p)).numpy(), to_output_dtype(p, "uint8"))


def test_a_quantised_block_is_stored_as_it_came_and_only_where_allowed(tmp_path: Path) -> None:
    from unetcore.model import UNet
    from unetcore.normalization import Normalization
    from unetcore.predict import PredictConfig, TilePredictor

    plan = plan_for(str(tmp_path / "o.zarr"))
    output = create_output(plan, OutputOptions(dtype="uint8"))
    roi = Roi((0, 0, 0), (1, 16, 16))
    data = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    output.write(roi, data)
    np.testing.assert_array_equal(np.asarray(output.array("probability")[roi.to_slices()]), data)
    predictor = TilePredictor(UNet(preset("tiny")), Normalization(), PredictConfig(device="cpu"))
    assert output.device_dtype(predictor) == "uint8" and output.device_dtype(object()) == "float32"
    masked = create_output(plan_for(str(tmp_path / "m.zarr")), OutputOptions(dtype="uint8", mask=True))
    assert masked.device_dtype(predictor) == "float32"  # the mask needs the float probability
    with pytest.raises(ValueError, match="expected float32 probabilities for a uint8 output with a mask, got uint8"):
        masked.write(roi, data)
    as_float = create_output(plan_for(str(tmp_path / "f.zarr")), OutputOptions(dtype="float32"))
    with pytest.raises(ValueError, match="expected float32 probabilities for a float32 output, got uint8"):
        as_float.write(roi, data)


def test_write_must_match_the_roi(tmp_path: Path) -> None:
    output = create_output(plan_for(str(tmp_path / "o.zarr")))
    with pytest.raises(ValueError, match="shape"):
        output.write(Roi((0, 0, 0), (1, 16, 16)), np.zeros((1, 8, 8), np.float32))


def test_pyramid_levels_are_2x_means_in_yx(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    output = create_output(plan, OutputOptions(dtype="float32"))
    p = fill(output, plan)
    paths = write_pyramid(out, 2)
    group = zarr.open_group(out, mode="r")
    one, two = group[paths[1]][...], group[paths[2]][...]
    assert one.shape == (3, 20, 28) and two.shape == (3, 10, 14)
    np.testing.assert_allclose(one, p.reshape(3, 20, 2, 28, 2).mean(axis=(2, 4)), rtol=1e-6)
    (multiscale,) = multiscales_of(group.attrs.asdict())
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[50.0, 4.0, 4.0], [50.0, 8.0, 8.0], [50.0, 16.0, 16.0]]
    assert multiscale["datasets"][1]["coordinateTransformations"][1] == {"type": "translation", "translation": [0.0, 2.0, 2.0]}
    assert open_volume(out, level=2).shape == (3, 10, 14)
    assert set(xr.open_zarr(out, consolidated=False).data_vars) == {"probability"}  # levels stay out of the root


def test_odd_sizes_average_the_voxels_that_exist(tmp_path: Path) -> None:
    out = str(tmp_path / "odd.zarr")
    plan = make_plan("/in.zarr", out, (1, 3, 5), TINY, block_shape=(1, 8, 8))
    output = create_output(plan, OutputOptions(dtype="float32"))
    p = np.arange(15, dtype=np.float32).reshape(1, 3, 5) / 15
    output.write(plan.block(0).write_roi, p)
    level = zarr.open_group(out, mode="r")[write_pyramid(out, 1)[1]][...]
    assert level.shape == (1, 2, 3)
    assert level[0, 1, 2] == pytest.approx(p[0, 2, 4]) and level[0, 0, 2] == pytest.approx(p[0, 0:2, 4].mean())


def test_s3_output_keeps_credentials_out_of_attrs(s3) -> None:
    opts, bucket = s3["storage_options"], s3["bucket"]
    out = f"s3://{bucket}/out.zarr"
    plan = make_plan(f"s3://user:{SECRET}@{bucket}/in.zarr", out, SHAPE, TINY, block_shape=(1, 16, 16))
    output = create_output(plan, storage_options=opts)
    fill(output, plan)
    text = "".join(s3["fs"].cat_file(p).decode() for p in s3["fs"].find(f"{bucket}/out.zarr") if p.endswith("zarr.json"))
    assert SECRET not in text and "testing" not in text
    assert json.loads(s3["fs"].cat_file(f"{bucket}/out.zarr/zarr.json"))["attributes"]["emunet"]["input_url"] == f"s3://{bucket}/in.zarr"
    ds = xr.open_zarr(out, consolidated=False, storage_options=opts)
    assert ds["probability"].dims == ("z", "y", "x")


def test_the_xarray_snippet_in_the_docs_runs(tmp_path: Path) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"
    blocks = docs.read_text().split("```python\n")[1:]
    (snippet,) = [b.split("```")[0] for b in blocks if "xr.open_zarr" in b]
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    fill(create_output(plan), plan)
    scope: dict = {"out": out}
    exec(compile(snippet, str(docs), "exec"), scope)  # the documented code, verbatim
    assert scope["cell"].shape == (10, 56) and scope["prob"].dims == ("z", "y", "x")


def test_sharded_output_has_sub_chunks_inside_block_sized_shards(tmp_path: Path) -> None:
    out = str(tmp_path / "sharded.zarr")
    plan = plan_for(out, block_shape=(1, 16, 16), chunk_shape=(1, 8, 8), shard_shape=(1, 16, 16))
    output = create_output(plan, OutputOptions(dtype="float32"))
    p = fill(output, plan)
    array = zarr.open_group(out, mode="r")["probability"]
    assert array.chunks == (1, 8, 8) and array.shards == (1, 16, 16)
    np.testing.assert_array_equal(open_output(out).read(), p)


def test_two_creators_racing_on_s3_cannot_both_win(s3, monkeypatch) -> None:
    """The race made deterministic on S3 (moto): the second creator's existence check ran
    before the first created the output; its conditional PUT of the claim is refused (412)."""
    import pipeline.output as output

    opts, bucket = s3["storage_options"], s3["bucket"]
    plan = make_plan(f"s3://{bucket}/in.zarr", f"s3://{bucket}/race.zarr", SHAPE, TINY, block_shape=(1, 16, 16))
    first = output.create_output(plan, storage_options=opts)
    first.group["probability"][0, :16, :16] = 7
    monkeypatch.setattr(output, "check_output", lambda *a, **k: Existing("none"))
    with pytest.raises(output.OutputExistsError, match="another run created"):
        output.create_output(plan, storage_options=opts)
    monkeypatch.undo()
    assert s3["fs"].exists(f"{bucket}/race.zarr/{output.CLAIM}")
    again = output.open_output(plan.output_url, storage_options=opts)
    assert (again.group["probability"][0, :16, :16] == 7).all()  # the first run's data survives
    replaced = output.create_output(plan, overwrite=True, storage_options=opts)  # overwrite claims anew
    assert (replaced.group["probability"][0, :16, :16] == 0).all()


def test_the_mask_is_an_ome_zarr_label_image_and_stays_an_xarray_variable(tmp_path: Path) -> None:
    """ome-zarr-py's reader sees the image and a label layer; ome-zarr-models validates the
    NGFF 0.5 image, labels group and label image; xarray still opens ``mask`` at the root."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    p = fill(create_output(plan, OutputOptions(mask=True)), plan)
    expected = (p >= 0.5).astype(np.uint8)

    location = parse_url(out)
    assert location is not None and location.version == "0.5"
    nodes = list(Reader(location)())
    image = nodes[0]
    assert image.metadata["name"] == "probability" and any(isinstance(s, Multiscales) for s in image.specs)
    assert image.data[0].shape == SHAPE and image.metadata["coordinateTransformations"][0][0]["scale"] == list(VOXEL)
    (label,) = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert label.metadata["name"] == "mask" and label.metadata["properties"][1] == {"class": "cell"}
    np.testing.assert_array_equal(np.asarray(label.data[0]), expected)

    group = zarr.open_group(out, mode="r")
    Image.from_zarr(group)  # raises on any NGFF 0.5 violation, labels included
    ImageLabel.from_zarr(group["labels/mask"])
    assert group["labels"].attrs["labels"] == ["mask"]  # NGFF 0.4 readers
    assert group["labels/mask"].attrs["image-label"]["source"] == {"image": "../../"}
    ds = xr.open_zarr(out, consolidated=False)
    assert set(ds.data_vars) == {"probability", "mask"}
    np.testing.assert_array_equal(ds["mask"].values, expected)


def test_an_output_without_a_mask_has_no_labels(tmp_path: Path) -> None:
    out = str(tmp_path / "out.zarr")
    plan = plan_for(out)
    fill(create_output(plan), plan)
    assert "labels" not in zarr.open_group(out, mode="r")


VIEWERS = Path(__file__).resolve().parents[2] / "docs" / "viewers.md"


def _viewer_blocks() -> list[str]:
    return [b.split("```")[0] for b in VIEWERS.read_text().split("```python\n")[1:]]


def test_the_viewers_page_reader_snippet_runs(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "seg.zarr")
    plan = plan_for(out)
    fill(create_output(plan, OutputOptions(mask=True)), plan)
    (snippet,) = [b for b in _viewer_blocks() if "ome_zarr.reader" in b]
    scope: dict = {"out": out}
    exec(compile(snippet, str(VIEWERS), "exec"), scope)  # the documented code, verbatim
    assert scope["levels"][0].shape == SHAPE and scope["scale"] == list(VOXEL) and scope["mask"].dtype == np.uint8
    assert "probability (3, 40, 56) [50.0, 4.0, 4.0] mask uint8" in capsys.readouterr().out


def test_the_viewers_page_cors_server_serves_metadata_and_byte_ranges(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import urllib.request

    (server,) = [b for b in _viewer_blocks() if "CORSHandler" in b]
    (tmp_path / "cors_server.py").write_text(server)
    out = str(tmp_path / "seg.zarr")
    plan = plan_for(out)
    fill(create_output(plan, OutputOptions(mask=True)), plan)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "cors_server.py", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}/seg.zarr"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(f"{base}/labels/mask/zarr.json", timeout=10) as reply:
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
            assert json.loads(reply.read())["attributes"]["ome"]["image-label"]["source"] == {"image": "../../"}
        chunk = (tmp_path / "seg.zarr" / "probability" / "c" / "0" / "0" / "0").read_bytes()
        request = urllib.request.Request(f"{base}/probability/c/0/0/0", headers={"Range": "bytes=2-5"})
        with opener.open(request, timeout=10) as reply:
            assert reply.status == 206 and reply.read() == chunk[2:6]  # rangehttpserver came with ome-zarr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
