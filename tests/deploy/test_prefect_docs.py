"""The Prefect commands and deployment YAML the docs quote are valid for the real flows.

Every ``prefect deployment run`` line in the docs (and ``prefect.yaml``'s comments) is
parsed as Prefect's CLI parses it (`prefect.cli._utilities.load_json_key_values` for
``--param``, JSON for ``--params``, a here-document of the same block for ``--params - <
FILE``), then checked the way a run is: its keys must be parameters of the deployment's flow
(the CLI refuses others: "parameters were specified but not found on the deployment"), and
the deployment's parameters updated with them (Prefect merges top-level keys) must pass the
flow's own `Flow.validate_parameters` (the pydantic ``params`` model). The deployments come
from ``prefect.yaml`` and the YAML blocks of the same document. No server is needed: a real
server and worker run the repository's deployment in `tests/flows/test_e2e_deployment.py`.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT

DOCS = ("docs/admin.md", "deploy/prefect/README.md", "docs/guide-deployments.md", "prefect.yaml")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HEREDOC = re.compile(r"cat > (\S+) <<'?(\w+)'?\n(.*?)\n\2\n", re.S)


@dataclass(frozen=True)
class RunCommand:
    source: str  # "file: the line", for failure messages
    deployment: str  # "flow-name/deployment-name"
    parameters: dict[str, Any]


def flow_of(entrypoint: str) -> Any:
    """The flow object of ``flows/x.py:name``."""
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def deployments_in(data: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``flow-name/deployment-name`` → (flow, default parameters) of a prefect.yaml mapping."""
    out = {}
    for entry in (data or {}).get("deployments") or []:
        flow = flow_of(entry["entrypoint"])
        out[f"{flow.name}/{entry['name']}"] = (flow, dict(entry.get("parameters") or {}))
    return out


def yaml_blocks(text: str) -> list[Any]:
    return [yaml.safe_load(body) for lang, body in FENCE.findall(text) if lang == "yaml"]


def run_commands(name: str, text: str) -> list[RunCommand]:
    """Each ``prefect deployment run`` of a document, its parameters as Prefect parses them
    (a command reading its parameters from a file the document does not show is left out)."""
    import json

    from prefect.cli._utilities import load_json_key_values

    if name.endswith(".yaml"):  # commands quoted in comments: "#   prefect deployment run …"
        blocks = ["\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))]
    else:
        blocks = [body for lang, body in FENCE.findall(text) if lang in ("sh", "bash", "console", "")]
    commands = []
    for block in blocks:
        files = {m.group(1): m.group(3) for m in HEREDOC.finditer(block)}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith("prefect deployment run"):
                continue
            argv = shlex.split(line)
            params: dict[str, Any] = {}
            singles: list[str] = []
            shown = True  # False: parameters from a file the document does not show
            i = 4
            while i < len(argv):
                arg = argv[i]
                if arg == "--params":
                    value = argv[i + 1]
                    if value == "-":
                        assert argv[i + 2] == "<", f"{name}: expected '--params - < FILE' in {line!r}"
                        value = files[argv[i + 3]]
                        i += 2
                    elif value.startswith("$("):
                        shown = False
                        break
                    params.update(json.loads(value))
                    i += 2
                elif arg == "--param":
                    singles.append(argv[i + 1])
                    i += 2
                else:
                    i += 1
            if not shown:
                continue
            params.update(load_json_key_values(singles, "parameter"))
            commands.append(RunCommand(f"{name}: {line}", argv[3], params))
    return commands


def check_run(command: RunCommand, deployments: dict[str, tuple[Any, dict[str, Any]]]) -> None:
    """Refuse what Prefect would refuse: an unknown deployment, unknown keys, invalid params."""
    assert command.deployment in deployments, f"{command.source}: no deployment {command.deployment!r} in {sorted(deployments)}"
    flow, defaults = deployments[command.deployment]
    known = set(flow.parameters.properties)
    unknown = set(command.parameters) - known
    assert not unknown, f"{command.source}: parameters {sorted(unknown)} are not on the deployment (it takes {sorted(known)})"
    flow.validate_parameters({**defaults, **command.parameters})


def all_commands() -> list[tuple[str, RunCommand]]:
    out = []
    for name in DOCS:
        text = (ROOT / name).read_text()
        out += [(name, c) for c in run_commands(name, text)]
    return out


@pytest.fixture(scope="module")
def repository_deployments() -> dict[str, tuple[Any, dict[str, Any]]]:
    return deployments_in(yaml.safe_load((ROOT / "prefect.yaml").read_text()))


def test_every_quoted_run_command_is_valid_for_its_flow(repository_deployments) -> None:
    commands = all_commands()
    where = {name for name, _ in commands}
    assert {"docs/admin.md", "deploy/prefect/README.md", "docs/guide-deployments.md", "prefect.yaml"} <= where
    assert len(commands) >= 5
    for name, command in commands:
        deployments = dict(repository_deployments)
        for block in yaml_blocks((ROOT / name).read_text()):
            deployments.update(deployments_in(block if isinstance(block, dict) else {}))
        check_run(command, deployments)


def test_the_deployment_yaml_blocks_validate(repository_deployments) -> None:
    readme = (ROOT / "deploy/prefect/README.md").read_text()
    found = {}
    for block in yaml_blocks(readme):
        if isinstance(block, dict) and "deployments" in block:
            found.update(deployments_in(block))
    assert {"segment-volume/emunet-k8s", "segment-volume/emunet-slurm"} <= set(found)
    for flow, defaults in (*found.values(), *repository_deployments.values()):
        flow.validate_parameters(defaults)
    schedulers = {key: defaults["params"]["cluster"]["scheduler"] for key, (_, defaults) in found.items()}
    assert schedulers["segment-volume/emunet-k8s"] == "tcp://emunet-scheduler:8786"


def test_the_old_form_is_refused_by_the_same_check(repository_deployments) -> None:
    """The command the docs quoted before: the check refuses it, as the deployment did."""
    (old,) = run_commands("old.md", "```sh\nprefect deployment run segment-volume/segment --param scheduler=tcp://emunet-scheduler:8786\n```\n")
    assert old.parameters == {"scheduler": "tcp://emunet-scheduler:8786"}
    with pytest.raises(AssertionError, match=r"parameters \['scheduler'\] are not on the deployment"):
        check_run(old, repository_deployments)
    from prefect.exceptions import ParameterTypeError

    bad = RunCommand("bad", "segment-volume/segment", {"params": {"input_url": "a", "output_url": "b", "checkpoint": "c", "scheduler": "tcp://x:1"}})
    with pytest.raises(ParameterTypeError, match="scheduler"):
        check_run(bad, repository_deployments)
