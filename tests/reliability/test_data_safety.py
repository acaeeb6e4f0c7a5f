"""A user's data is never deleted or changed by a command that did not create it.

Through the real CLI, on both paths of the commands that have them (`--flow`, `--no-flow`):
every case is refused with exit 2, a message that says what is there, and every file under
the test's folder (inputs, the user's files, an existing output) byte-for-byte untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.reliability.conftest import CHUNKS, snapshot, write_zarr


@dataclass
class Here:
    """The test's folder: an input volume beside a notes file, a folder of the user's work."""

    tmp: Path
    checkpoint: Path
    image: np.ndarray

    @property
    def inp(self) -> Path:
        return self.tmp / "d" / "in.zarr"

    @property
    def user(self) -> Path:
        return self.tmp / "r"


@pytest.fixture()
def here(tmp_path, checkpoint, image) -> Here:
    h = Here(tmp_path, checkpoint, image)
    write_zarr(h.inp, image, CHUNKS)
    (tmp_path / "d" / "notes.txt").write_text("lab notes")
    h.user.mkdir()
    (h.user / "thesis.tex").write_text("years of work")
    return h


def _seg(h: Here, out: Path | str, *extra: str, inp: Path | None = None) -> list[str]:
    return ["segment", str(inp or h.inp), str(out), "--model", str(h.checkpoint), "--block", "2", "24", "24",
            "--workers", "1", "--no-flow", *extra]  # fmt: skip


def _labels_zarr(h: Here) -> Path:
    return write_zarr(h.tmp / "lab.zarr", (h.image > 100).astype("uint8"), CHUNKS)


def _tif(h: Here, name: str) -> Path:
    path = h.tmp / name
    tifffile.imwrite(path, h.image[:2], photometric="minisblack")
    return path


def _file_at_output(h: Here) -> list[str]:
    (h.tmp / "out.zarr").write_text("a file of the user's")
    return _seg(h, h.tmp / "out.zarr", "--overwrite")


def _foreign_zarr(h: Here) -> list[str]:
    (h.tmp / "theirs.zarr").mkdir()
    (h.tmp / "theirs.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    return _seg(h, h.tmp / "theirs.zarr")


def _import_over_user_folder(h: Here) -> list[str]:
    (h.tmp / "work.zarr").mkdir()
    (h.tmp / "work.zarr" / "thesis.tex").write_text("years of work")
    return ["import", str(_tif(h, "x.tif")), str(h.tmp / "work.zarr"), "--overwrite"]


def _demo_into_user_volume(h: Here) -> list[str]:
    write_zarr(h.user / "input.zarr", h.image, CHUNKS)  # the user's own volume under the demo's name
    return ["demo", "--out", str(h.user)]


def _over_an_import(h: Here) -> list[str]:
    """Swapped arguments: the volume `emunet import` wrote given as the segmentation's output."""
    from pipeline.importer import import_volume

    import_volume(_tif(h, "x.tif"), h.tmp / "raw.zarr")
    return _seg(h, h.tmp / "raw.zarr", "--overwrite")


def _predict_over_synthetic_images(h: Here) -> list[str]:
    from unetcore.io import write_tiff

    images = write_tiff(h.tmp / "em.tif", h.image[:2], kind="synthetic-image")
    return ["predict", str(_tif(h, "x.tif")), str(images), "--model", str(h.checkpoint), "--overwrite"]


def _probability_store(h: Here, name: str, attrs: dict) -> Path:
    import zarr

    group = zarr.open_group(str(h.tmp / name), mode="w", zarr_format=3)
    group.create_array("probability", data=h.image[:2], chunks=(1, 24, 24), dimension_names=("z", "y", "x"))
    group.attrs.update(attrs)
    return h.tmp / name


def _labels_tif(h: Here) -> Path:
    path = h.tmp / "lab.tif"
    tifffile.imwrite(path, ((h.image[:2] > 100) * 255).astype(np.uint8), photometric="minisblack")
    return path


def _no_membrane_tif(h: Here) -> Path:
    path = h.tmp / "em.tif"
    tifffile.imwrite(path, np.clip(h.image[:2], 1, 255), photometric="minisblack")  # EM: no grey value 0
    return path


def _probability_tif(h: Here) -> Path:
    from unetcore.io import write_tiff

    return write_tiff(h.tmp / "p.tif", (h.image[:2] / 255).astype("float32"), kind="probability")


def _agglomerate_users_neuron_ids(h: Here) -> list[str]:
    import zarr

    store = _probability_store(h, "seg.zarr", {"emunet": {"voxel_size_nm": [1, 1, 1]}})
    zarr.open_group(str(store))["neuron_ids"] = np.ones(h.image[:2].shape, np.uint64)  # the user's, unmarked
    return ["agglomerate", str(store), "--overwrite", "--workers", "0"]


@dataclass
class Case:
    build: Callable[[Here], list[str]]
    says: tuple[str, ...]  # substrings (lower case) of the message
    flow: bool = True  # the command has --flow/--no-flow
    never: tuple[str, ...] = ()  # substrings the message must not have


CASES = {
    "segment --overwrite into a folder of the user's": Case(
        lambda h: _seg(h, h.user, "--overwrite"), ("not an emunet output", "thesis.tex", "replaces only what it wrote")),
    "segment --overwrite into the input's folder": Case(
        lambda h: _seg(h, h.tmp / "d", "--overwrite"), ("contains the input", "would delete the input")),
    "segment X X --overwrite": Case(lambda h: _seg(h, h.inp, "--overwrite"), ("is the input", "never writes into its inputs")),
    "segment into the input's store": Case(lambda h: _seg(h, h.inp / "seg"), ("lies inside the input",)),
    "segment --overwrite of a regular file": Case(_file_at_output, ("a file", "replaces only what it wrote")),
    "segment over a foreign zarr without a flag": Case(_foreign_zarr, ("emunet did not write", "choose another output path"),
                                                       never=("--overwrite", "--resume")),
    "segment --overwrite of the folder holding the checkpoint": Case(
        lambda h: _seg(h, h.checkpoint.parent, "--overwrite"), ("contains the input", "tiny.safetensors")),
    "weights lab.zarr r --overwrite": Case(
        lambda h: ["weights", str(_labels_zarr(h)), str(h.user), "--overwrite", "--no-flow"], ("thesis.tex", "replaces only")),
    "weights lab.zarr lab.zarr --overwrite": Case(
        lambda h: ["weights", str(_labels_zarr(h)), str(h.tmp / "lab.zarr"), "--overwrite", "--no-flow"], ("is the input",)),
    "predict X X --overwrite": Case(
        lambda h: ["predict", str(_tif(h, "x.tif")), str(h.tmp / "x.tif"), "--model", str(h.checkpoint), "--overwrite"],
        ("apart from the input",), flow=False),
    "predict --overwrite of the user's TIFF": Case(
        lambda h: ["predict", str(_tif(h, "x.tif")), str(_tif(h, "mine.tif")), "--model", str(h.checkpoint), "--overwrite"],
        ("emunet did not write", "choose another output path"), flow=False),
    "import --overwrite of a folder of the user's": Case(_import_over_user_folder, ("thesis.tex", "replaces only"), flow=False),
    "import into a foreign Zarr without a flag": Case(
        lambda h: ["import", str(_tif(h, "x.tif")), str(h.inp)], ("emunet did not write", "choose another"), flow=False,
        never=("--overwrite",)),
    "demo --out over the user's input.zarr": Case(_demo_into_user_volume, ("input.zarr", "demo did not write"), flow=False),
    "segment --overwrite of an emunet import": Case(_over_an_import, ("a volume `emunet import` wrote", "same command")),
    "predict --overwrite of the images emunet synthetic wrote": Case(
        _predict_over_synthetic_images, ("got a synthetic-image tiff", "same kind"), flow=False),
    "agglomerate of a store emunet did not write": Case(
        lambda h: ["agglomerate", str(_probability_store(h, "theirs.zarr", {})), "--workers", "0"],
        ("expected an `emunet segment` output", "a store emunet did not write"), flow=False),
    "segment of a segment output (its probability map)": Case(
        lambda h: _seg(h, h.tmp / "again.zarr", inp=_probability_store(h, "seg.zarr", {"emunet": {"plan": {}}}) / "probability"),
        ("expected an em volume to segment", "an `emunet segment` output")),
    "predict of emunet's own probability TIFF": Case(
        lambda h: ["predict", str(_probability_tif(h)), str(h.tmp / "pp.tif"), "--model", str(h.checkpoint)],
        ("expected an em image to predict", "a probability tiff emunet wrote"), flow=False),
    "train with a segment output as --weights": Case(
        lambda h: ["train", "--images", str(_tif(h, "x.tif")), "--labels", str(_labels_tif(h)), "--weights",
                   str(_probability_store(h, "seg.zarr", {"emunet": {"plan": {}}}) / "probability"), "--out",
                   str(h.tmp / "run"), "--no-flow"],
        ("expected a weight map for --weights", "an `emunet segment` output")),
    "weights of the EM image (a TIFF)": Case(
        lambda h: ["weights", str(_no_membrane_tif(h)), str(h.tmp / "w.tif")], ("expected labels with membrane",), flow=False),
    "weights of the EM image (a Zarr volume)": Case(
        lambda h: ["weights", str(write_zarr(h.tmp / "em.zarr", np.clip(h.image, 1, 255), CHUNKS)), str(h.tmp / "w.zarr"),
                   "--no-flow"], ("expected labels with membrane", "order of the arguments"), flow=False),  # one pipeline check
    "train --images labels --labels images (swapped)": Case(
        lambda h: ["train", "--images", str(_tif(h, "y.tif")), "--labels", str(_no_membrane_tif(h)), "--out",
                   str(h.tmp / "run"), "--no-flow", "--preset", "tiny", "--steps", "1"],
        ("expected labels with membrane",), flow=False),
    "weights of emunet's probability TIFF": Case(
        lambda h: ["weights", str(_probability_tif(h)), str(h.tmp / "w.tif")], ("expected labels", "a probability tiff"),
        flow=False),
    "weights of a segment output": Case(
        lambda h: ["weights", str(_probability_store(h, "seg.zarr", {"emunet": {"plan": {}}}) / "probability"),
                   str(h.tmp / "w.zarr"), "--no-flow"], ("expected labels", "an `emunet segment` output"), flow=False),
    "train --images of emunet's probability TIFF": Case(
        lambda h: ["train", "--images", str(_probability_tif(h)), "--labels", str(_labels_tif(h)), "--out",
                   str(h.tmp / "run"), "--no-flow", "--preset", "tiny", "--steps", "1"],
        ("expected an em image", "a probability tiff emunet wrote"), flow=False),
    "agglomerate --overwrite of the user's own neuron_ids": Case(
        _agglomerate_users_neuron_ids, ("`neuron_ids`", "the instance stage did not write"), flow=False),
}


def _flat(text: str) -> str:
    return " ".join(text.lower().split())


RUNS = [(name, path) for name, case in CASES.items() for path in (("--no-flow", "--flow") if case.flow else ("",))]


@pytest.mark.parametrize("name, path", RUNS, ids=[f"{n} {p}".strip() for n, p in RUNS])
def test_nothing_of_the_users_is_touched(name, path, cli, runner, here) -> None:
    case = CASES[name]
    args = case.build(here)
    if path == "--flow":
        args = [a for a in args if a != "--no-flow"] + ["--flow"]
    before = snapshot(here.tmp)
    result = runner.invoke(cli, args)
    message = _flat(result.output)
    assert result.exit_code == 2, result.output
    assert "traceback" not in message
    for text in case.says:
        assert text in message, f"{text!r} not in {result.output!r}"
    for text in case.never:
        assert text not in message, f"{text!r} in {result.output!r}"
    assert snapshot(here.tmp) == before  # not one byte or mtime changed, nothing created


def test_the_demo_writes_only_into_a_new_or_its_own_folder(tmp_path) -> None:
    from emunet.cli.demo import DEMO_MARK, claim_folder

    claim_folder(tmp_path / "new")  # a new folder becomes the demo's
    assert (tmp_path / "new" / DEMO_MARK).is_file()
    (tmp_path / "new" / "report.json").write_text("{}")
    (tmp_path / "new" / ".input.zarr.partial-0a1b2c3d-42-deadbeef").mkdir()  # an import the demo made, killed
    claim_folder(tmp_path / "new")  # an earlier demo's folder is reused
    (tmp_path / "new" / "mine.csv").write_text("the user's")
    with pytest.raises(FileExistsError, match="mine.csv"):
        claim_folder(tmp_path / "new")  # …unless the user put something of theirs there
    (tmp_path / "empty").mkdir()
    claim_folder(tmp_path / "empty")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="got a file"):
        claim_folder(tmp_path / "afile")
