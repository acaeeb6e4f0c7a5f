"""deploy/kubernetes: the Dask operator and Prefect worker manifests, checked as data.

No cluster here, so the manifests are parsed (`yaml.safe_load_all`) and held to what the
pipeline needs: a GPU per worker pod, the Dask resource ``GPU=1``, the work pool name, the
scheduler service the clients use, requests on every container, and no inline secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes

from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "kubernetes"
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|AUTH|CREDENTIAL)", re.IGNORECASE)


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in documents():
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = doc.get("spec", {})
        if doc["kind"] == "DaskCluster":
            yield name + "/scheduler", spec["scheduler"]["spec"]
            yield name + "/worker", spec["worker"]["spec"]
        elif doc["kind"] == "DaskWorkerGroup":
            yield name, spec["worker"]["spec"]
        elif doc["kind"] == "Deployment":
            yield name, spec["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name}/{container['name']}", container


def gpu_workers() -> list[tuple[str, dict[str, Any]]]:
    return [(n, c) for n, c in containers() if "/worker" in n or n.startswith("DaskWorkerGroup")]


def k8s_bytes(quantity: str) -> int:
    """Kubernetes memory quantity (Gi, Mi, G, …) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTE]i?)?", str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    number, unit = match.groups()
    return parse_bytes(f"{number}{(unit or '') + ('B' if unit else '')}")


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_every_manifest_parses_and_names_a_kind() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["ConfigMap", "DaskAutoscaler", "DaskCluster", "DaskWorkerGroup", "Deployment"]
    for doc in documents():
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_dask_cluster_scheduler_and_service() -> None:
    (cluster,) = by_kind("DaskCluster")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    scheduler = cluster["spec"]["scheduler"]
    (container,) = scheduler["spec"]["containers"]
    assert container["args"][:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = scheduler["service"]
    name = cluster["metadata"]["name"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    assert {p["port"]: p["targetPort"] for p in service["ports"]} == {8786: "tcp-comm", 8787: "http-dashboard"}


@pytest.mark.parametrize("name, container", gpu_workers(), ids=[n for n, _ in gpu_workers()])
def test_gpu_worker_owns_one_gpu_and_declares_it(name: str, container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    args = container["args"]
    assert args[:2] == ["dask", "worker"]
    assert flag(args, "--resources") == "GPU=1"
    assert flag(args, "--nthreads") == "1" and flag(args, "--nworkers") == "1"
    assert flag(args, "--name") == "$(DASK_WORKER_NAME)"  # injected by the operator
    assert container["image"].startswith("emunet-worker:")
    # memory: request = limit (no overcommit), and Dask's own limit leaves headroom below it
    assert k8s_bytes(resources["requests"]["memory"]) == k8s_bytes(resources["limits"]["memory"])
    assert parse_bytes(flag(args, "--memory-limit")) < k8s_bytes(resources["limits"]["memory"])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("OMP_NUM_THREADS") == str(resources["requests"]["cpu"])
    assert env.get("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED") == "False"  # no sampling profiler


def test_worker_groups_and_autoscaler_join_the_cluster() -> None:
    (cluster,) = by_kind("DaskCluster")
    name = cluster["metadata"]["name"]
    for group in by_kind("DaskWorkerGroup"):
        assert group["apiVersion"] == "kubernetes.dask.org/v1"
        assert group["spec"]["cluster"] == name
    (autoscaler,) = by_kind("DaskAutoscaler")
    assert autoscaler["spec"]["cluster"] == name
    assert 1 <= autoscaler["spec"]["minimum"] <= autoscaler["spec"]["maximum"]


def test_prefect_worker_polls_the_process_pool() -> None:
    (deployment,) = by_kind("Deployment")
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert flag(args, "--pool") == "emunet-process" and flag(args, "--type") == "process"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})  # GPUs live in Dask
    (config,) = by_kind("ConfigMap")
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs["configMapRef"] == config["metadata"]["name"]
    assert config["data"]["PREFECT_API_URL"].startswith("http")
    (cluster,) = by_kind("DaskCluster")
    assert config["data"]["EMUNET_SEGMENT_SCHEDULER"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"


@pytest.mark.parametrize("name, container", list(containers()), ids=[n for n, _ in containers()])
def test_every_container_requests_cpu_and_memory(name: str, container: dict[str, Any]) -> None:
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert "memory" in container["resources"].get("limits", {})
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_pods_run_as_the_image_user() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    (uid,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    for name, spec in pod_specs():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid, name


def test_no_secret_is_inline() -> None:
    assert not by_kind("Secret"), "Secrets are created outside the repository, never committed"
    for name, container in containers():
        for entry in container.get("env", []):
            if SECRETISH.search(entry["name"]):
                assert "value" not in entry, f"{name}: {entry['name']} must come from a Secret"
        for ref in container.get("envFrom", []):
            assert set(ref) <= {"configMapRef", "secretRef", "prefix"}
    for config in by_kind("ConfigMap"):
        assert not [k for k in config["data"] if SECRETISH.search(k)]
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert not re.search(r"AKIA[0-9A-Z]{16}|pnu_[0-9a-zA-Z]{20,}|BEGIN [A-Z ]*PRIVATE KEY", text)


def test_docs_name_the_same_pool_and_service() -> None:
    root = DEPLOY.parent
    for doc in (root / "docs" / "admin.md", DEPLOY / "prefect" / "README.md"):
        text = doc.read_text()
        assert "prefect work-pool create emunet-process --type process" in text, doc
        assert "emunet-scheduler" in text, doc
