"""k8s/ run for what podman accepts: `podman kube play` (podman 4.3 plays Pods, Deployments, PersistentVolumeClaims
and the ConfigMaps they use; it has no Services, StatefulSets, Jobs, NetworkPolicies or PodDisruptionBudgets).

From the rendered `kubectl kustomize k8s` output, unchanged but for what the runtime lacks: the ConfigMap of
config.json, the PVC model-cache, the models Job's pod template played as a Pod (kube play has no Job kind; the Pod is
that template) until it has filled the volume, then the tokenizer Deployment (its init container waits for the
models, then the service starts with the manifests' own command, env, mounts, user and read-only root) until its
own healthcheck passes inside the container. The volume is made group-writable for the pods' fsGroup first, as the
kubelet would. Everything played is removed again (`podman kube down`, the volume)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from ops.deploy_test import yaml_files
from ops.deploy_test.runtime import CA_BUNDLE, ROOT, WORK, DeployTestError, inspect, log, podman

PLAYED_DEPLOYMENTS = ("tokenizer",)
VOLUME = "model-cache"
TIMEOUT_S = 1200


def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize k8s` (kubectl of the dev dependencies, or on PATH), as documents."""
    kubectl = Path(ROOT / ".venv" / "bin" / "kubectl")
    binary = str(kubectl) if kubectl.exists() else "kubectl"
    out = subprocess.run([binary, "kustomize", str(ROOT / "k8s")], check=True, capture_output=True, text=True).stdout
    return yaml_files.load_all(out)


def playable(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the models step: ConfigMap, PVC, the Job's pod as a Pod; the service step: the played Deployments)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    job = next(d for d in by_kind["Job"] if d["metadata"]["name"] == "models")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "models", "labels": job["spec"]["template"]["metadata"]["labels"]},
           "spec": job["spec"]["template"]["spec"]}
    if CA_BUNDLE.is_file():
        trust_host_ca(pod["spec"])
    for claim in by_kind["PersistentVolumeClaim"]:
        owned_by_fs_group(claim, pod["spec"]["securityContext"])
    models_step = [*by_kind["ConfigMap"], *by_kind["PersistentVolumeClaim"], pod]
    services = [d for d in by_kind["Deployment"] if d["metadata"]["name"] in PLAYED_DEPLOYMENTS]
    for deployment in services:
        keep_init_containers(deployment)
    return models_step, [*by_kind["ConfigMap"], *services]


def owned_by_fs_group(claim: dict[str, Any], security: dict[str, Any]) -> None:
    """The kubelet makes a volume writable for the pod's fsGroup; podman's volume annotations do that here."""
    claim["metadata"].setdefault("annotations", {}).update({
        "volume.podman.io/uid": str(security["runAsUser"]), "volume.podman.io/gid": str(security["fsGroup"])})


def keep_init_containers(deployment: dict[str, Any]) -> None:
    """podman 4.3 removes a finished init container while runc still reports it running, and then fails the whole
    pod ("failed to remove once init container ... as it is running"); podman's own annotation keeps it instead."""
    deployment["metadata"].setdefault("annotations", {})["io.podman.annotations.init.container.type"] = "always"


def trust_host_ca(spec: dict[str, Any]) -> None:
    """This machine's network intercepts TLS: the models pod's download trusts the host's CA bundle (as the compose
    run's override does); a cluster with a plain network needs nothing of this."""
    spec["volumes"].append({"name": "host-ca", "hostPath": {"path": str(CA_BUNDLE), "type": "File"}})
    for container in spec["containers"]:
        container.setdefault("env", []).append({"name": "PIP_CERT", "value": "/etc/ssl/host-ca-bundle.crt"})
        container["volumeMounts"].append({"name": "host-ca", "mountPath": "/etc/ssl/host-ca-bundle.crt",
                                          "readOnly": True})


def write(name: str, docs: list[dict[str, Any]]) -> Path:
    path = WORK / f"kube-{name}.yaml"
    yaml_files.dump_all(docs, path)
    return path


def play(path: Path) -> None:
    result = podman("kube", "play", "--network", "podman", str(path), check=False, capture=True, timeout=600)
    if result.returncode != 0:
        raise DeployTestError(f"podman kube play {path.name}: {result.stderr.strip()[-2000:]}")


def wait_exited(container: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while (state := inspect(container)["State"])["Status"] != "exited":
        if time.monotonic() > deadline:
            raise DeployTestError(f"kube: {container} still {state['Status']} after {TIMEOUT_S} s")
        time.sleep(2)
    if state["ExitCode"] != 0:
        logs = podman("logs", "--tail", "30", container, capture=True, check=False)
        raise DeployTestError(f"kube: {container} exited {state['ExitCode']}:\n{logs.stdout}{logs.stderr}")


def wait_healthy(container: str, role: str) -> float:
    started, deadline = time.monotonic(), time.monotonic() + TIMEOUT_S
    while True:
        check = podman("exec", container, "python", "-m", "ops.healthcheck", role, check=False, capture=True,
                       timeout=120)
        if check.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() > deadline or inspect(container)["State"]["Status"] not in ("running", "created"):
            logs = podman("logs", "--tail", "30", container, capture=True, check=False)
            raise DeployTestError(f"kube: {container} not healthy: {check.stdout}{check.stderr}\n{logs.stdout}"
                                  f"{logs.stderr}")
        time.sleep(2)


def check_security(container: str) -> None:
    """The manifests' securityContext held: the container runs as UID 10001 on a read-only root file system."""
    state = inspect(container)
    user, read_only = str(state["Config"]["User"]).split(":")[0], state["HostConfig"]["ReadonlyRootfs"]
    if user != "10001" or not read_only:
        raise DeployTestError(f"kube: {container} runs as {user!r}, read-only root {read_only}")


def play_step() -> None:
    models_step, services = playable(rendered())
    files = [write("models", models_step), write("services", services)]
    volumes = [VOLUME, *(d["metadata"]["name"] for d in models_step if d["kind"] == "ConfigMap")]
    try:
        log("podman kube play: the ConfigMap, the PVC model-cache, the models Job's pod")
        play(files[0])
        wait_exited("models-models")
        log(f"podman kube play: the Deployment(s) {', '.join(PLAYED_DEPLOYMENTS)}")
        play(files[1])
        for name in PLAYED_DEPLOYMENTS:
            seconds = wait_healthy(f"{name}-pod-0-{name}", name)
            check_security(f"{name}-pod-0-{name}")
            log(f"kube: the {name} Deployment's container is healthy {seconds:.0f} s after kube play returned "
                "(its init container had waited for the models), as UID 10001 on a read-only root")
    finally:
        for path in reversed(files):
            podman("kube", "down", str(path), check=False, capture=True, timeout=300)
        # kube down leaves the volumes it made: the claim's and the ConfigMaps' (podman keeps those as volumes)
        podman("volume", "rm", "-f", *volumes, check=False, capture=True)
    pods = "|".join(["models", *(f"{name}-pod-0" for name in PLAYED_DEPLOYMENTS)])
    left = podman("pod", "ps", "-q", "--filter", f"name=^({pods})$", capture=True).stdout.split()
    if left or any(podman("volume", "exists", v, check=False).returncode == 0 for v in volumes):
        raise DeployTestError(f"kube down left pods {left} or volumes of {volumes}")
    log("podman kube down: no pod or volume left")
