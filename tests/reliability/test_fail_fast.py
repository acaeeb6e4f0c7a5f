"""Mistakes end in one clear line, fast, before any server or cluster starts, never a hang
or a traceback. Through the real `emunet` command (a subprocess, as a user runs it); the
flow-path twin of a check and the checks of what a command accepts run the same app in this
process (`here`), which spares a ~5 s start of Python, torch and Prefect each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tests.reliability.conftest import CHUNKS, write_zarr

EMUNET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "emunet"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EMUNET_", "PREFECT_API"))}
    return subprocess.run([str(EMUNET), *args], capture_output=True, text=True, timeout=timeout, env={**environ, **(env or {})})


@pytest.fixture()
def here(cli, runner, capfd, monkeypatch):
    """`emunet ARGS` in this process, in `run`'s environment: a CompletedProcess whose stderr
    also holds what went to the real stderr (where Prefect's console log writes)."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as mp:
            for k in [k for k in os.environ if k.startswith(("EMUNET_", "PREFECT_API"))]:
                mp.delenv(k)
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            capfd.readouterr()
            result = runner.invoke(cli, list(args))
            real = capfd.readouterr()
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout + real.out, result.stderr + real.err)

    return invoke


def one_error(done: subprocess.CompletedProcess, *says: str) -> str:
    """Exit 2, the message once, no traceback, no Prefect server, no flow run."""
    text = done.stdout + done.stderr
    flat = " ".join(text.lower().split())
    assert done.returncode == 2, text[-3000:]
    assert "traceback" not in flat and "temporary server" not in flat and "flow run" not in flat, text[-3000:]
    assert flat.count("error (") == 1, text[-3000:]
    for s in says:
        assert s.lower() in flat, (s, text[-2000:])
    return flat


@pytest.fixture()
def seg(tmp_path, image, checkpoint, here):
    """`emunet segment` of a fresh input into tmp_path/out.zarr: a subprocess, or (`in_process`) `here`."""
    inp = write_zarr(tmp_path / "in.zarr", image, CHUNKS)

    def segment(*extra: str, env: dict[str, str] | None = None, in_process: bool = False) -> subprocess.CompletedProcess:
        args = ("segment", str(inp), str(tmp_path / "out.zarr"), "--model", str(checkpoint), "--block", "2", "24", "24", *extra)
        return here(*args, env=env) if in_process else run(*args, env=env)

    return segment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("path", ["--flow", "--no-flow"])
def test_a_scheduler_address_that_is_not_a_scheduler(path, seg, tmp_path, request) -> None:
    """A closed port is refused at once; an HTTP server (say the dashboard's port) after the
    handshake limit, naming what answered. Both used to take 65 s and over 10 minutes.
    The flow path runs in this process (reporting to the session's Prefect server, were a
    flow to start): what it adds is that the refusal comes before any flow."""
    in_process = path == "--flow"
    if in_process:
        request.getfixturevalue("prefect_api")
    one_error(seg("--scheduler", f"tcp://127.0.0.1:{_free_port()}", path, in_process=in_process),
              "nothing listening there", "connection refused")  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = seg("--scheduler", f"tcp://127.0.0.1:{server.server_port}", path, env={"EMUNET_SEGMENT_CONNECT_TIMEOUT_S": "2"},
                   in_process=in_process)  # fmt: skip
    finally:
        server.shutdown()
    one_error(done, "got an http server", "http/1.0 200", "tcp://host:8786")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    "extra, env, says",
    [
        (["--workers", "64"], {}, ("expected at most", "local workers", "got --workers 64")),
        (["--device", "tpu"], {}, ("expected a device in auto, cpu, cuda", "'tpu'")),
        (["--device", "cuda"], {}, ("expected a cuda gpu", "--device cpu")),
        ([], {"EMUNET_SEGMENT_TORCH_THREADS": "-1"}, ("torch_threads ≥ 1", "got -1")),
        (["--tile", "50"], {}, ("nearest legal sizes",)),
        (["--tile", "big"], {}, ("expected --tile as one positive size",)),
    ],
    ids=["64 workers", "tpu", "cuda without a gpu", "torch threads -1", "illegal tile", "tile not a number"],
)
def test_usage_errors_are_one_line_before_anything_starts(extra, env, says, seg, tmp_path) -> None:
    if "cuda" in extra and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_error(seg(*extra, env=env), *says)
    assert not (tmp_path / "out.zarr").exists()


def test_the_command_line_wins_over_the_environment(seg) -> None:
    """EMUNET_SEGMENT_WORKERS set, --scheduler given: the scheduler is used (the address is
    closed, so the error says so), not "got both"."""
    done = seg("--scheduler", f"tcp://127.0.0.1:{_free_port()}", env={"EMUNET_SEGMENT_WORKERS": "2"})
    flat = one_error(done, "nothing listening there")
    assert "got both" not in flat


def test_one_tile_convention_everywhere(seg, here, tmp_path, checkpoint, image, local_scheduler) -> None:
    """`--tile 116` (one size) and `--tile 116,116` mean the same input tile in segment and
    predict; model-info lists legal sizes around the default 572. (What is accepted, not a
    mistake: in this process.)"""
    one = seg("--tile", "116", "--scheduler", local_scheduler, "--no-flow", "--json", in_process=True)
    assert one.returncode == 0, one.stderr[-2000:]
    assert json.loads(one.stdout)["ok"]
    tifffile.imwrite(tmp_path / "x.tif", image[:1], photometric="minisblack")
    for tile in ("116", "116,116"):
        done = here("predict", str(tmp_path / "x.tif"), str(tmp_path / f"p{tile}.tif"), "--model", str(checkpoint),
                    "--tile", tile, "--device", "cpu")  # fmt: skip
        assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p116.tif"), tifffile.imread(tmp_path / "p116,116.tif"))
    info = json.loads(here("model-info", "--json").stdout)
    assert 572 in info["legal_input_sizes"] and info["input_shape"] == [572, 572]
    info = json.loads(here("model-info", "--preset", "aniso3d", "--tile", "76,252,252", "--json").stdout)
    assert info["input_shape"] == [76, 252, 252]


def test_help_shows_whole_option_names_at_80_columns() -> None:
    done = run("segment", "--help", env={"COLUMNS": "80"})
    assert done.returncode == 0
    for name in ("--blocks-per-task", "--no-check-finite", "--grey-range", "--sparse"):
        assert name in done.stdout, name
    assert "…" not in done.stdout


# -- tracebacks where a message belongs -------------------------------------------------------
def test_broken_metadata_is_named(seg, tmp_path, image, checkpoint) -> None:
    inp = write_zarr(tmp_path / "cut.zarr", image, CHUNKS)
    text = (inp / "zarr.json").read_text()
    (inp / "zarr.json").write_text(text[: len(text) // 2])
    one_error(run("segment", str(inp), str(tmp_path / "o.zarr"), "--model", str(checkpoint)),
              "readable zarr metadata", "cut.zarr/zarr.json", "truncated")  # fmt: skip
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.create_array("0", data=image)
    group.attrs["multiscales"] = ["not an object"]
    one_error(run("segment", str(tmp_path / "ome.zarr"), str(tmp_path / "o.zarr"), "--model", str(checkpoint)),
              "expected ome multiscales as a list of objects")  # fmt: skip


def test_a_truncated_tiff_in_import(tmp_path, image) -> None:
    tifffile.imwrite(tmp_path / "full.tif", np.concatenate([image] * 4), photometric="minisblack")
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    one_error(run("import", str(tmp_path / "cut.tif"), str(tmp_path / "o.zarr")), "expected a complete tiff", "truncated")
    assert not any(p.name.startswith((".o.zarr", "o.zarr")) for p in tmp_path.iterdir())


def test_a_3d_model_on_a_2d_image(tmp_path, image) -> None:
    from unetcore.checkpoint import save_checkpoint
    from unetcore.config import preset
    from unetcore.model import UNet
    from unetcore.normalization import Normalization

    model = save_checkpoint(tmp_path / "3d.safetensors", UNet(preset("aniso3d").replace(base_channels=2)), Normalization())
    tifffile.imwrite(tmp_path / "x.tif", image[0], photometric="minisblack")
    one_error(run("predict", str(tmp_path / "x.tif"), str(tmp_path / "p.tif"), "--model", str(model)),
              "expected a 3d image or a stack of them for this 3d model", "(48, 48)")  # fmt: skip


def test_evaluate_takes_the_probability_of_an_output_group_and_prints_plain_thresholds(tmp_path, image) -> None:
    group = zarr.open_group(str(tmp_path / "seg.zarr"), mode="w")
    group.create_array("probability", data=(image > 100).astype("uint8") * 255)
    labels = write_zarr(tmp_path / "gt.zarr", (image > 90).astype("uint8"), CHUNKS)
    done = run("evaluate", str(tmp_path / "seg.zarr"), str(labels))
    assert done.returncode == 0, done.stderr
    assert "0.30000000000000004" not in done.stdout and "0.9999999999999999" not in done.stdout
    group.create_array("other", data=np.zeros((2, 2, 2), "uint8"))
    del group["probability"]
    one_error(run("evaluate", str(tmp_path / "seg.zarr"), str(labels)), "holding arrays ['other']", "seg.zarr:name")


def test_a_local_cluster_serves_its_dashboard() -> None:
    """The dashboard works out of the box (bokeh is a dependency) on a free local port, and
    `emunet segment` prints its link for local --workers runs."""
    import urllib.request

    from pipeline.cluster import ClusterConfig, connect

    with connect(ClusterConfig(workers=1, torch_threads=1)) as cluster:
        link = cluster.dashboard
        assert link and link.startswith("http://127.0.0.1:"), link
        with urllib.request.urlopen(link, timeout=30) as page:
            assert page.status == 200 and b"Dask" in page.read()


@pytest.mark.parametrize(
    "config, extra, says",
    [
        ("train:\n  steps: many\n", [], "expected steps as a whole number, got 'many'"),
        ("train: [steps: 1\n", [], "got a syntax error at line 2"),
        (None, ["--lr", "nan"], "expected lr as a finite number, got nan"),
    ],
    ids=["steps many", "yaml syntax", "lr nan"],
)
def test_train_configuration_errors_are_messages(config, extra, says, tmp_path, image) -> None:
    tifffile.imwrite(tmp_path / "x.tif", image[:2], photometric="minisblack")
    tifffile.imwrite(tmp_path / "y.tif", (image[:2] > 100).astype("uint8"), photometric="minisblack")
    args = ["train", "--images", str(tmp_path / "x.tif"), "--labels", str(tmp_path / "y.tif"), "--preset", "tiny",
            "--out", str(tmp_path / "run"), "--no-flow", *extra]  # fmt: skip
    if config is not None:
        (tmp_path / "bad.yaml").write_text(config)
        args += ["--config", str(tmp_path / "bad.yaml")]
    one_error(run(*args), says)
    assert not (tmp_path / "run").exists()


def test_a_second_resume_of_one_output_is_refused_while_the_first_runs(tmp_path, image, checkpoint, local_scheduler) -> None:
    """Two --resume runs of one output would each compute every remaining block: the run
    writing an output holds its lock (`pipeline.runlock`), a second is refused naming it; a
    lock whose process is gone (a killed run) is taken over."""
    import time

    from pipeline.runlock import LOCK, RunLock, check_free
    from tests.reliability.conftest import wait_for

    inp = write_zarr(tmp_path / "in.zarr", np.concatenate([image] * 40), CHUNKS)  # 160 slices: 640 blocks, minutes
    out = tmp_path / "o.zarr"
    args = ["segment", str(inp), str(out), "--model", str(checkpoint), "--block", "1", "24", "24", "--scheduler",
            local_scheduler, "--blocks-per-task", "1", "--max-in-flight", "1", "--no-flow"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMUNET_")} | {"EMUNET_SEGMENT_TORCH_THREADS": "1"}
    first = subprocess.Popen([str(EMUNET), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / LOCK).exists() or first.poll() is not None, 120, "the first run's lock")
        assert first.poll() is None
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == first.pid
        one_error(run(*args, "--resume"), "expected no other run writing", f"pid {first.pid}", "wait for it")
    finally:
        first.kill()
        first.wait(30)
    assert first.returncode == -9, "the first run ended before it was killed"
    time.sleep(0.5)
    assert (out / LOCK).exists()  # left behind by the killed run: its pid is gone, so it is stale
    check_free(str(out))  # a resume would be let in…
    with RunLock(str(out)) as lock:  # …and take the lock over
        assert json.loads((out / LOCK).read_text())["token"] == lock.token
    assert not (out / LOCK).exists()  # released at the end


def test_a_checkpoint_header_with_a_wrong_type_is_a_message(tmp_path, checkpoint, image) -> None:
    from safetensors.torch import load_file, save_file

    from unetcore.checkpoint import read_header

    header = read_header(checkpoint)
    header["model_config"]["num_classes"] = "two"
    save_file(load_file(str(checkpoint)), str(tmp_path / "two.safetensors"), metadata={"emunet": json.dumps(header)})
    tifffile.imwrite(tmp_path / "x.tif", image[:1], photometric="minisblack")
    for args in (["predict", str(tmp_path / "x.tif"), str(tmp_path / "p.tif")],
                 ["segment", str(write_zarr(tmp_path / "in.zarr", image, CHUNKS)), str(tmp_path / "o.zarr")]):  # fmt: skip
        one_error(run(*args, "--model", str(tmp_path / "two.safetensors")), "expected a valid model config")


def test_a_checkpoint_header_without_its_hash_is_a_message(tmp_path, checkpoint, image) -> None:
    from safetensors.torch import load_file, save_file

    from unetcore.checkpoint import read_header

    header = read_header(checkpoint)
    del header["content_sha256"]
    save_file(load_file(str(checkpoint)), str(tmp_path / "nohash.safetensors"), metadata={"emunet": json.dumps(header)})
    tifffile.imwrite(tmp_path / "x.tif", image[:1], photometric="minisblack")
    one_error(run("predict", str(tmp_path / "x.tif"), str(tmp_path / "p.tif"), "--model", str(tmp_path / "nohash.safetensors")),
              "expected 'content_sha256'", "re-save it")  # fmt: skip
