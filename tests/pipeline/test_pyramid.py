"""The pyramid on the workers (`pipeline.pyramid`): equal bit for bit to the former serial
client-side computation (kept here as the reference) for every output dtype and odd shapes,
resumable from its markers, and the client never reads a voxel.

One real LocalCluster (2 worker processes) per module; real Zarr stores under ``tmp_path``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.output import (
    AXES, DENSE, PYRAMID_GROUP, OutputOptions, create_output, ome_attrs, ome_dataset, ome_multiscale, open_group, zstd,
)  # fmt: skip
from pipeline.plan import make_plan
from pipeline.pyramid import PyramidError, pyramid, useful_levels, write_pyramid
from pipeline.pyramid_regions import RegionMarkers, region_grid, region_roi, region_shape
from pipeline.volume import multiscales_of
from unetcore.config import preset

VOXEL = (50.0, 4.0, 4.0)
SMALL_REGIONS = 512  # target voxels per task: several regions per level even on tiny volumes


# --------------------------------------------------------------------------- the reference


def _reference_mean(block: np.ndarray, out_shape) -> np.ndarray:
    z, y, x = out_shape
    pad = [(0, 0), (0, 2 * y - block.shape[1]), (0, 2 * x - block.shape[2])]
    padded = np.pad(block.astype(np.float32), pad, mode="edge")
    return padded.reshape(z, y, 2, x, 2).mean(axis=(2, 4))


def reference_pyramid(output_url: str, levels: int) -> list[str]:
    """The serial client-side implementation this replaced, unchanged in its arithmetic."""
    group = open_group(output_url, "r+")
    attrs = dict(group.attrs.asdict())
    meta = attrs.get("emunet") or {}
    name = (meta.get("output") or {}).get("name", "probability")
    voxel = tuple(meta.get("voxel_size_nm") or (1.0, 1.0, 1.0))
    source = group[name]
    paths = [name]
    count = useful_levels(source.shape[1:], source.chunks[1:], levels)
    for k in range(1, count + 1):
        prev = source
        shape = (prev.shape[0], -(-prev.shape[1] // 2), -(-prev.shape[2] // 2))
        chunks = tuple(min(c, s) for c, s in zip(source.chunks, shape, strict=True))
        path = f"{PYRAMID_GROUP}/{name}/{k}"
        level = group.create_array(path, shape=shape, chunks=chunks, dtype=prev.dtype, fill_value=0,
                                   dimension_names=AXES, compressors=zstd(), overwrite=True, config=DENSE)  # fmt: skip
        grid = [range(0, s, c) for s, c in zip(shape, chunks, strict=True)]
        for z0 in grid[0]:
            for y0 in grid[1]:
                for x0 in grid[2]:
                    out = tuple(min(c, s - o) for c, s, o in zip(chunks, shape, (z0, y0, x0), strict=True))
                    src = np.asarray(prev[z0 : z0 + out[0], 2 * y0 : 2 * (y0 + out[1]), 2 * x0 : 2 * (x0 + out[2])])
                    mean = _reference_mean(src, out)
                    if np.issubdtype(level.dtype, np.integer):
                        mean = np.rint(mean)
                    level[z0 : z0 + out[0], y0 : y0 + out[1], x0 : x0 + out[2]] = mean.astype(level.dtype)
        source = level
        paths.append(path)
    datasets = [ome_dataset(p, voxel, (1, 2**k, 2**k)) for k, p in enumerate(paths)]
    multiscales = [m for m in (multiscales_of(attrs) or []) if m.get("name") != name]
    multiscales.insert(0, ome_multiscale(name, datasets, kind="mean"))
    for m in multiscales:
        m.setdefault("version", "0.4")
    group.attrs.update(ome_attrs(multiscales))
    return paths


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from pipeline.cluster import ClusterConfig, local_cluster

    cluster, _, _ = local_cluster(ClusterConfig(workers=2, torch_threads=1))
    with cluster, Client(cluster.scheduler_address) as c:
        yield c


def make_output(path: Path, shape, dtype: str, block=(1, 16, 16), seed: int = 0) -> tuple[str, np.ndarray]:
    """An emunet output (create_output) whose probability holds random values of ``dtype``."""
    out = str(path)
    plan = make_plan("/data/in.zarr", out, shape, preset("tiny"), block_shape=block, voxel_size=VOXEL,
                     checkpoint_sha256="c0ffee" * 10 + "abcd")  # fmt: skip
    create_output(plan, OutputOptions(dtype=dtype))
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        data = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        data = rng.random(shape, dtype=np.float32).astype(dtype)
    zarr.open_group(out, mode="r+")["probability"][...] = data
    return out, data


def levels_of(out: str, paths: list[str]) -> list[np.ndarray]:
    group = zarr.open_group(out, mode="r")
    return [group[p][...] for p in paths]


def assert_same_pyramid(out: str, ref: str, paths: list[str]) -> None:
    for got, want in zip(levels_of(out, paths), levels_of(ref, paths), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(f"u{got.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}"))  # bits


def chunk_files(out: str, k: int) -> dict[str, int]:
    root = Path(out) / PYRAMID_GROUP / "probability" / str(k) / "c"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def chunks_of(r: int, shape, region, chunks) -> list[str]:
    """The chunk keys (``z/y/x``) of region ``r`` of a level."""
    offset, size = region_roi(r, shape, region)
    ranges = [range(o // c, -(-(o + s) // c)) for o, s, c in zip(offset, size, chunks)]
    return [f"{z}/{y}/{x}" for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def total_regions(out: str, k: int) -> int:
    level = zarr.open_group(out, mode="r")[f"pyramid/probability/{k}"]
    return int(np.prod(region_grid(level.shape, region_shape(level.shape, level.chunks, SMALL_REGIONS))))


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("shape", "chunks", "budget"),
    [((3, 38, 51), (1, 16, 16), 512), ((4, 300, 300), (1, 64, 64), 1 << 15), ((2, 3, 5), (1, 3, 5), 1 << 22),
     ((7, 9, 130), (2, 4, 8), 64)],
)  # fmt: skip
def test_regions_are_whole_chunks_and_cover_every_voxel_once(shape, chunks, budget) -> None:
    region = region_shape(shape, chunks, budget)
    assert all(r % c == 0 for r, c in zip(region, chunks)) and np.prod(region) <= max(budget, np.prod(chunks))
    seen = np.zeros(shape, np.int32)
    for r in range(int(np.prod(region_grid(shape, region)))):
        offset, size = region_roi(r, shape, region)
        assert all(o % c == 0 for o, c in zip(offset, chunks))  # starts on a chunk: whole chunks only
        seen[tuple(slice(o, o + s) for o, s in zip(offset, size))] += 1
    assert (seen == 1).all()


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32"])
@pytest.mark.parametrize(("shape", "block", "budget"), [((3, 75, 101), (1, 16, 16), SMALL_REGIONS), ((2, 37, 9), (1, 8, 8), 40)])
def test_workers_equal_the_serial_reference(client, tmp_path: Path, dtype: str, shape, block, budget: int) -> None:
    out, _ = make_output(tmp_path / "out.zarr", shape, dtype, block)
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(out, ref)
    want = reference_pyramid(ref, 4)
    stats = pyramid(out, 4, client=client, region_voxels=budget)
    assert stats.paths == want and len(want) > 2 and stats.written > len(want)  # several regions per level
    assert_same_pyramid(out, ref, want)
    assert zarr.open_group(out).attrs.asdict() == zarr.open_group(ref).attrs.asdict()  # OME multiscales as before
    default = pyramid(out, 4, client=client)  # default region size: one region per level here
    assert default.paths == want
    assert_same_pyramid(out, ref, want)


def test_without_a_client_the_same_tasks_run_here(tmp_path: Path) -> None:
    out, _ = make_output(tmp_path / "out.zarr", (2, 37, 9), "float32", (1, 8, 8))
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(out, ref)
    want = reference_pyramid(ref, 3)
    assert write_pyramid(out, 3, region_voxels=SMALL_REGIONS) == want
    assert_same_pyramid(out, ref, want)


# --------------------------------------------------------------------------- resume


def test_resume_writes_only_what_is_missing_and_equals_a_clean_run(client, tmp_path: Path) -> None:
    out, _ = make_output(tmp_path / "out.zarr", (3, 75, 101), "uint8")
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(out, ref)
    want = reference_pyramid(ref, 3)
    first = pyramid(out, 3, client=client, region_voxels=SMALL_REGIONS)
    assert first.paths == want and first.skipped == 0

    # An interruption in level 1: half its regions done, the rest lost (garbled chunks, no
    # markers), level 2 never started.
    one = RegionMarkers(out, "probability", 1)
    region = region_shape((3, 38, 51), (1, 16, 16), SMALL_REGIONS)
    total = int(np.prod(region_grid((3, 38, 51), region)))
    lost = list(range(1, total, 2))
    group = zarr.open_group(out, mode="r+")
    for r in lost:
        one.fs.rm(f"{one.root}/done/{r}")
        offset, size = region_roi(r, (3, 38, 51), region)
        group["pyramid/probability/1"][tuple(slice(o, o + s) for o, s in zip(offset, size))] = 7
    one.fs.rm(f"{one.root}/complete")
    RegionMarkers(out, "probability", 2).reset()
    shutil.rmtree(Path(out) / "pyramid" / "probability" / "2")
    kept = [r for r in range(total) if r not in lost]
    before = chunk_files(out, 1)

    resumed = pyramid(out, 3, client=client, region_voxels=SMALL_REGIONS, resume=True)
    above = total_regions(out, 2) + total_regions(out, 3)  # stale once level 1 changed: written again
    assert (resumed.skipped, resumed.written, resumed.levels_skipped) == (len(kept), len(lost) + above, 0)
    assert_same_pyramid(out, ref, want)
    after = chunk_files(out, 1)
    assert set(after) == set(before)
    for r, rewritten in [(r, False) for r in kept] + [(r, True) for r in lost]:
        for key in chunks_of(r, (3, 38, 51), region, (1, 16, 16)):
            assert (after[key] != before[key]) == rewritten, (r, key)  # done regions are skipped

    again = pyramid(out, 3, client=client, region_voxels=SMALL_REGIONS, resume=True)
    assert (again.written, again.levels_skipped) == (0, 3)
    assert chunk_files(out, 2)
    assert_same_pyramid(out, ref, want)

    fresh = pyramid(out, 3, client=client, region_voxels=SMALL_REGIONS)  # no resume: everything again
    assert fresh.levels_skipped == 0 and fresh.skipped == 0
    assert_same_pyramid(out, ref, want)


def test_a_failed_region_is_named_and_a_resume_finishes_the_level(client, tmp_path: Path) -> None:
    out, _ = make_output(tmp_path / "out.zarr", (2, 37, 9), "float16", (1, 8, 8))
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(out, ref)
    want = reference_pyramid(ref, 2)
    chunk = Path(out) / "probability" / "c" / "1" / "2" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not zstd")  # a corrupt source chunk: the regions reading it fail
    with pytest.raises(PyramidError, match=r"expected every region of pyramid level 1 .* got 1 failed .*--resume"):
        pyramid(out, 2, client=client, region_voxels=64)
    chunk.write_bytes(good)
    resumed = pyramid(out, 2, client=client, region_voxels=64, resume=True)
    assert resumed.skipped > 0 and resumed.written > 0
    assert_same_pyramid(out, ref, want)


# --------------------------------------------------------------------------- no client reads


@contextmanager
def client_reads_no_voxels() -> Iterator[None]:
    """In this (the client's) process, reading any chunk of any array raises."""
    from zarr.storage import LocalStore

    read = LocalStore.get

    async def get(self, key, *args, **kwargs):
        if "/c/" in f"/{key}":
            raise AssertionError(f"expected no voxel read on the client, got a read of {key}")
        return await read(self, key, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalStore, "get", get)
        yield


def test_the_client_reads_no_voxels(client, tmp_path: Path) -> None:
    out, _ = make_output(tmp_path / "out.zarr", (3, 75, 101), "float32")
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(out, ref)
    shutil.copytree(out, tmp_path / "here.zarr")
    want = reference_pyramid(ref, 3)
    with client_reads_no_voxels():
        with pytest.raises(AssertionError, match="expected no voxel read on the client"):  # the check can fail
            write_pyramid(str(tmp_path / "here.zarr"), 3)  # no client: the tasks run (and read) here
        paths = write_pyramid(out, 3, client=client, region_voxels=SMALL_REGIONS)  # the URL and a client only
    assert paths == want
    assert_same_pyramid(out, ref, want)
