"""`pipeline.ownership`: what a command may write over, on local paths, file:// and s3://.

The rule: never into, around or onto an input; an existing output only with overwrite, and
then only if emunet wrote it (its own metadata, nothing foreign inside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.ownership import NotOursError, OutputExistsError, OutputIsInputError, check_output, inspect, remove_ours

OURS = {"zarr_format": 3, "node_type": "group", "attributes": {"emunet": {"version": "0"}}}
FOREIGN = {"zarr_format": 3, "node_type": "group", "attributes": {"mine": 1}}


def _store(path: Path, meta: dict, *children: str) -> Path:
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps(meta))
    for child in children:
        (path / child).mkdir()
        (path / child / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    return path


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_locations_related_to_an_input_are_refused(tmp_path, scheme) -> None:
    inp = _store(tmp_path / "d" / "in.zarr", FOREIGN, "0")
    url = lambda p: f"{scheme}{p}"  # noqa: E731
    for out, says in [
        (inp, "which is the input"),
        (inp / "seg.zarr", "which lies inside the input"),
        (tmp_path / "d", "which contains the input"),
        (tmp_path, "which contains the input"),
    ]:
        for overwrite in (False, True):
            with pytest.raises(OutputIsInputError, match=says):
                check_output(url(out), reads=(url(inp) + "/0",), overwrite=overwrite)
    # The checkpoint and an HDF5 dataset count as inputs too.
    ckpt = tmp_path / "models" / "m.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    with pytest.raises(OutputIsInputError, match="contains the input"):
        check_output(url(tmp_path / "models"), reads=(str(ckpt),), overwrite=True)
    with pytest.raises(OutputIsInputError, match="is the input"):
        check_output(str(tmp_path / "v.h5"), reads=(f"{tmp_path / 'v.h5'}:/stack",))
    for dataset in (f"{tmp_path / 'c.n5'}:raw", f"{tmp_path / 'c.n5'}/raw"):  # an N5 dataset: its container
        with pytest.raises(OutputIsInputError, match="lies inside the input"):
            check_output(str(tmp_path / "c.n5" / "raw" / "out.zarr"), reads=(dataset,))
    check_output(url(tmp_path / "d" / "out.zarr"), reads=(url(inp),))  # a sibling is fine


def test_a_zarr_store_of_any_name_is_one_input(tmp_path) -> None:
    """`segment mydata/raw mydata/seg`: `mydata` is a Zarr group without the `.zarr` suffix (or
    with `.ZARR`); the output would land inside the user's hierarchy."""
    for name in ("mydata", "Lab.ZARR"):
        store = _store(tmp_path / name, FOREIGN, "raw")
        for out in (store / "seg", store / "raw" / "seg.zarr"):
            with pytest.raises(OutputIsInputError, match="lies inside the input"):
                check_output(str(out), reads=(str(store / "raw"),))
    assert check_output(str(tmp_path / "seg.zarr"), reads=(str(tmp_path / "mydata" / "raw"),)).kind == "none"


def test_what_is_there_decides_the_message_and_the_flag(tmp_path) -> None:
    user = tmp_path / "r"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not an emunet output .*thesis.tex.*choose another") as err:
        check_output(str(user))
    assert "--overwrite" not in str(err.value)  # never suggested for data emunet did not write
    with pytest.raises(NotOursError, match="replaces only what it wrote"):
        check_output(str(user), overwrite=True)

    foreign = _store(tmp_path / "foreign.zarr", FOREIGN)
    with pytest.raises(NotOursError, match="emunet did not write"):
        check_output(str(foreign), overwrite=True)

    afile = tmp_path / "out.zarr"
    afile.write_text("a file")
    with pytest.raises(NotOursError, match="a file"):
        check_output(str(afile), overwrite=True)

    ours = _store(tmp_path / "seg.zarr", OURS, "probability", "ledger")
    with pytest.raises(OutputExistsError, match="--resume .*--overwrite"):
        check_output(str(ours))
    assert check_output(str(ours), overwrite=True).ours
    (ours / "notes.txt").write_text("added by the user")
    with pytest.raises(NotOursError, match="also holds other files .*notes.txt"):
        check_output(str(ours), overwrite=True)
    assert (ours / "notes.txt").exists() and (user / "thesis.tex").exists() and afile.exists()


def test_zarr_nodes_the_user_added_to_an_emunet_output_keep_it_from_being_replaced(tmp_path) -> None:
    """Only the nodes emunet writes (its output array, whatever its name, mask, ledger, labels,
    multiscale levels, …) count as ours; an array or group the user added with zarr does not."""
    meta = {**OURS, "attributes": {"emunet": {"version": "0", "output": {"name": "membranes"}}}}
    ours = _store(tmp_path / "seg.zarr", meta, "membranes", "mask", "ledger", "labels", "fragments", "x", "0", "1")
    assert check_output(str(ours), overwrite=True).ours
    _store(ours / "my_annotations", FOREIGN)  # a group of the user's, made with zarr
    with pytest.raises(NotOursError, match="also holds other files .*my_annotations"):
        check_output(str(ours), overwrite=True)
    assert (ours / "my_annotations" / "zarr.json").exists()


def test_an_emunet_store_of_another_command_is_neither_replaced_nor_resumed(tmp_path) -> None:
    """Swapped arguments: `segment raw.zarr imported.zarr --overwrite` would replace the volume
    `emunet import` wrote with a segmentation; each command replaces only its own kind."""
    kinds = {"segment": {"plan": {}}, "weights": {"weights": {}}, "demo-image": {"kind": "demo-image"}}
    stores = {kind: _store(tmp_path / f"{kind}.zarr", {**OURS, "attributes": {"emunet": meta}}, "0") for kind, meta in kinds.items()}
    stores["import"] = _store(tmp_path / "import.zarr", {**OURS, "attributes": {"emunet_import": {"source": "a.tif"}}}, "0")
    for found, path in stores.items():
        assert inspect(str(path)).store_kind == found
        for kind in ("segment", "weights", "import"):
            if kind == found or {kind, found} == {"import", "demo-image"}:  # the demo imports its input too
                assert check_output(str(path), overwrite=True, kind=kind).ours
                continue
            with pytest.raises(NotOursError, match="expected --overwrite to replace .*, got .*replaces only an output of the same command"):
                check_output(str(path), overwrite=True, kind=kind)
            for flags in ({}, {"resume": True}):
                with pytest.raises(OutputExistsError, match="choose another output path") as err:
                    check_output(str(path), kind=kind, **flags)
                assert "--overwrite" not in str(err.value) and "--resume" not in str(err.value)
    with pytest.raises(OutputExistsError, match="got an existing emunet output; pass --overwrite") as err:
        check_output(str(stores["weights"]), kind="weights")  # `weights` has no --resume to offer
    assert "--resume" not in str(err.value)
    with pytest.raises(NotOursError, match="got a volume `emunet import` wrote"):
        check_output(str(stores["import"]), overwrite=True, kind="segment")
    assert all((p / "0" / "zarr.json").exists() for p in stores.values())


def test_a_path_and_its_other_spellings_are_one_location(tmp_path) -> None:
    from pipeline.ownership import same_location

    real = _store(tmp_path / "in.zarr", FOREIGN)
    (tmp_path / "link.zarr").symlink_to(real, target_is_directory=True)
    for other in (f"file://{real}", str(tmp_path / "link.zarr"), str(tmp_path / "d" / ".." / "in.zarr")):
        assert same_location(str(real), other)
    assert not same_location(str(real), str(tmp_path / "other.zarr"))


def test_overwrite_through_a_symlink_keeps_the_link_and_its_place(tmp_path) -> None:
    """`out.zarr -> /big/disk/out.zarr`: the store there goes; the link stays, so the new
    output is written where the user pointed it (`link_target`), not beside the link."""
    real = _store(tmp_path / "big" / "out.zarr", OURS, "probability", "ledger")
    link = tmp_path / "out.zarr"
    link.symlink_to(real, target_is_directory=True)
    assert check_output(str(link), overwrite=True).ours
    remove_ours(str(link))
    assert link.is_symlink() and not real.exists() and link.resolve() == real


def test_an_output_a_live_run_still_writes_is_not_replaced(tmp_path) -> None:
    """`--overwrite` while another run writes the output would mix two runs' blocks."""
    from pipeline.runlock import OutputBusyError, RunLock

    ours = _store(tmp_path / "seg.zarr", OURS, "probability", "ledger")
    with RunLock(str(ours)):
        assert check_output(str(ours), overwrite=True).ours
        with pytest.raises(OutputBusyError, match="expected no other run writing .*wait for it to end"):
            remove_ours(str(ours))
        assert (ours / "probability").exists()
    remove_ours(str(ours))  # the run ended: now it may go
    assert not ours.exists()


def test_s3_prefixes_follow_the_same_rule(s3) -> None:
    fs, bucket, opts = s3["fs"], s3["bucket"], s3["storage_options"]
    fs.pipe(f"{bucket}/user/thesis.tex", b"years of work")
    fs.pipe(f"{bucket}/seg.zarr/zarr.json", json.dumps(OURS).encode())
    fs.pipe(f"{bucket}/seg.zarr/probability/zarr.json", b'{"zarr_format": 3, "node_type": "array"}')
    fs.pipe(f"{bucket}/in.zarr/zarr.json", json.dumps(FOREIGN).encode())
    with pytest.raises(NotOursError, match="thesis.tex"):
        check_output(f"s3://{bucket}/user", overwrite=True, storage_options=opts)
    with pytest.raises(OutputIsInputError, match="contains the input"):
        check_output(f"s3://{bucket}", reads=(f"s3://{bucket}/in.zarr",), overwrite=True, storage_options=opts)
    with pytest.raises(OutputIsInputError, match="lies inside the input"):
        check_output(f"s3://{bucket}/in.zarr/out", reads=(f"s3://{bucket}/in.zarr",), storage_options=opts)
    assert inspect(f"s3://{bucket}/seg.zarr", opts).ours
    check_output(f"s3://{bucket}/seg.zarr", overwrite=True, storage_options=opts)
    remove_ours(f"s3://{bucket}/seg.zarr", opts)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/seg.zarr") and fs.exists(f"{bucket}/user/thesis.tex")
