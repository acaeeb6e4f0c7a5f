"""`emunet weights` on a local Typer app: outputs, overwrite refusal, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetcore.synthetic import synthetic_em_volume
from unetcore.weightmap import WeightMapConfig, border_weight_map, weight_map_stack


def write(path: Path, data: np.ndarray) -> None:
    """A grey TIFF (3-slice stacks would otherwise be stored as RGB)."""
    tifffile.imwrite(path, data, photometric="minisblack")


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_em_volume((3, 48, 56), seed=1).labels


def test_stack_gives_one_map_per_slice(app, runner, labels, tmp_path: Path) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "out" / "weights.tif"
    write(src, (labels > 0).astype(np.uint8) * 255)
    result = runner.invoke(app, ["weights", str(src), str(out), "--sigma", "4"])
    assert result.exit_code == 0, result.output
    maps = tifffile.imread(out)
    assert maps.dtype == np.float32 and maps.shape == labels.shape
    expected = weight_map_stack((labels > 0).astype(np.uint8), WeightMapConfig(sigma=4.0))
    np.testing.assert_array_equal(maps, expected)
    assert "3 slice(s)" in result.output and "mean" in result.output


def test_2d_image_instances_and_no_balance(app, runner, labels, tmp_path: Path) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "weights.tif"
    write(src, labels[0])
    args = ["weights", str(src), str(out), "--instances", "--class-balance", "none", "--w0", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = WeightMapConfig(w0=5.0, class_balance="none")
    expected = border_weight_map(labels[0], config, instances=True)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_3d_volume_gives_one_3d_map(app, runner, labels, tmp_path: Path) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "weights.tif"
    write(src, labels)
    result = runner.invoke(app, ["weights", str(src), str(out), "--instances", "--3d"])
    assert result.exit_code == 0, result.output
    expected = border_weight_map(labels, WeightMapConfig(), instances=True)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert "3D volume" in result.output


def test_existing_output_is_refused_unless_overwrite(app, runner, labels, tmp_path: Path) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "weights.tif"
    write(src, labels[0])
    out.write_bytes(b"keep me")  # the user's file: never replaced, not even with --overwrite
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["weights", str(src), str(out), *extra])
        assert result.exit_code == 2
        assert "did not write" in result.output and "choose another output path" in result.output, result.output
        assert out.read_bytes() == b"keep me"
    out.unlink()
    assert runner.invoke(app, ["weights", str(src), str(out)]).exit_code == 0
    result = runner.invoke(app, ["weights", str(src), str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output  # ours: the flag is offered
    result = runner.invoke(app, ["weights", str(src), str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert tifffile.imread(out).shape == labels[0].shape


def test_non_integer_float_labels_are_a_clear_error(app, runner, tmp_path: Path) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "weights.tif"
    write(src, np.full((16, 16), 0.5, dtype=np.float32))
    result = runner.invoke(app, ["weights", str(src), str(out)])
    assert result.exit_code == 2
    assert "non-integer" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, [], "no such file"),
        ("not a tiff", [], "readable TIFF"),
        (np.ones((8, 8), np.uint8), ["--3d"], "volume with --3d"),
        ("rgb", [], "colour samples"),
        (np.ones((8, 8), np.uint8), ["--sigma", "0"], "sigma > 0"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(app, runner, tmp_path: Path, make, args, message) -> None:
    src, out = tmp_path / "labels.tif", tmp_path / "weights.tif"
    if isinstance(make, str) and make == "rgb":
        tifffile.imwrite(src, np.ones((8, 8, 3), np.uint8), photometric="rgb")
    elif isinstance(make, str):
        src.write_text(make)
    elif make is not None:
        write(src, make)
    result = runner.invoke(app, ["weights", str(src), str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
