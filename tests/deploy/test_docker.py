"""deploy/docker: the worker image recipe, checked by parsing (no Docker daemon here).

The Dockerfile is split into instructions (comments dropped, continuations joined) and held
to: a CUDA base, the project installed with `pip install .` while the base image's torch is
kept, a numeric non-root USER, a `dask worker` default command with the GPU resource, and no
secrets. The build context filter must let in what the COPY lines need and nothing else.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY

DOCKER = DEPLOY / "docker"
ROOT = DEPLOY.parent
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|AUTH|CREDENTIAL)", re.IGNORECASE)


def instructions(path: Path = DOCKER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments removed."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return result


def values(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions() if kw == keyword]


def test_base_is_a_cuda_torch_image() -> None:
    args = dict(a.split("=", 1) for a in values("ARG") if "=" in a)
    (base,) = values("FROM")
    image = args.get(base.strip("${}"), base)
    assert re.match(r"(pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-runtime|nvidia/cuda:)", image), image


def test_project_installed_keeping_the_base_torch() -> None:
    runs = " && ".join(values("RUN"))
    assert re.search(r"pip install --constraint \S+ \"?\.", runs), "expected `pip install --constraint … .`"
    assert "torch==" in runs  # the constraint pins the base image's torch version
    for command in runs.split("&&"):
        argv = shlex.split(command)
        if argv[:2] != ["pip", "install"]:
            continue
        options_with_values = ("--constraint", "-c")
        targets = [
            a for i, a in enumerate(argv[2:], 2) if not a.startswith("-") and argv[i - 1] not in options_with_values
        ]
        assert targets[0] == ".${EXTRAS:+[$EXTRAS]}", f"pip installs {targets}: the project first"
        assert set(targets[1:]) <= {"bokeh>=3.1", "nvidia-ml-py"}, f"only dashboard extras, never torch: {targets}"


def test_every_package_is_copied_and_let_through_the_context_filter() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = set()
    for copy in values("COPY"):
        parts = [p for p in shlex.split(copy) if not p.startswith("--")]
        sources.update(s.rstrip("/") for s in parts[:-1])
    assert packages <= sources, f"not copied: {packages - sources}"
    assert {"pyproject.toml", "README.md"} <= sources
    allowed = included_by_context_filter(sorted(sources))
    assert allowed == sorted(sources)
    for secret in [".git", ".venv", "models", "runs", ".env", "id_rsa", "pipeline/x.pem", "a/b.key", ".aws"]:
        assert not included_by_context_filter([secret]), f"{secret} would enter the build context"


def included_by_context_filter(paths: list[str]) -> list[str]:
    """Paths a (simplified) dockerignore evaluation lets through: last matching rule wins."""
    rules = [
        line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kept = []
    for path in paths:
        included = True
        for rule in rules:
            negate, pattern = rule.startswith("!"), rule.lstrip("!")
            candidates = [path] + [path.split("/")[0]] if "/" in path else [path]
            bare = pattern.removeprefix("**/")
            hit = any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, bare) for c in candidates)
            hit = hit or (pattern.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern[3:]))
            if hit:
                included = negate
        if included:
            kept.append(path)
    return kept


def test_runs_as_a_numeric_non_root_user() -> None:
    users = values("USER")
    assert users, "expected a USER instruction"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root user (runAsNonRoot can verify it)"
    index = [kw for kw, _ in instructions()].index("USER")
    after = [kw for kw, _ in instructions()[index + 1:]]
    assert not {"RUN", "COPY", "ADD"} & set(after), "the build steps run as root, before USER"


def test_default_command_is_a_gpu_dask_worker() -> None:
    (cmd,) = values("CMD")
    argv = json.loads(cmd)  # exec form: signals reach dask directly
    assert argv[:2] == ["dask", "worker"]
    assert argv[argv.index("--resources") + 1] == "GPU=1"
    assert argv[argv.index("--nthreads") + 1] == "1"
    assert not values("ENTRYPOINT"), "an ENTRYPOINT would break `args:` in the Kubernetes manifests"


def test_no_secrets_in_the_recipe() -> None:
    for keyword in ("ENV", "ARG", "LABEL"):
        for rest in values(keyword):
            names = re.findall(r"(\w+)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SECRETISH.search(n)], f"{keyword} {rest}"
    text = (DOCKER / "Dockerfile").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|\.aws|\.netrc|id_rsa", text)
    for kw, rest in instructions():
        if kw in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|secret", rest, re.IGNORECASE), rest
        assert kw != "ADD" or not rest.startswith("http"), "no remote ADD"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.dockerignore"])
def test_recipe_files_exist(name: str) -> None:
    assert (DOCKER / name).is_file()
