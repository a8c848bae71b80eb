"""docker-compose.yml run for real: `docker compose up` (the Docker Compose CLI against podman's API) on the project's
private network, checked from the host as a user would: every service healthy, Paris through the frontend's nginx
(plain and streamed), only the published ports reachable, a node container killed and brought back by its restart
policy, and nothing left behind by `docker compose down -v`."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ops.deploy_test.health import HealthPump
from ops.deploy_test.runtime import PROJECT, Compose, DeployTestError, inspect, log, podman

UI_URL = "http://127.0.0.1:5173"
PUBLISHED = {("127.0.0.1", 8000), ("127.0.0.1", 5173)}  # the compose file's ports (loopback by default)
INTERNAL_PORTS = (50050, 50051, 50052, 50053, 50054)  # exposed to the compose network only
MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
UP_TIMEOUT_S = 1200  # first start: every node loads its shard; generous, never a speed assertion
KILLED_NODE = "node2"


@dataclass
class StackReport:
    up_seconds: float = 0.0
    healthy_seconds: dict[str, float] = field(default_factory=dict)  # from the container's start (a check passed)
    healthy_since_up: dict[str, float] = field(default_factory=dict)  # from `docker compose up` (models job included)
    stream_chunks: int = 0
    node_back_seconds: float = 0.0  # the kill -> the model answers again through nginx
    restart_count: int = 0


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def host_address() -> str | None:
    """The host's own non-loopback address (the one its default route uses), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def preflight(compose: Compose) -> None:
    """A stack left by an interrupted run is removed; the published ports must be free."""
    compose.run("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300)
    for host, port in sorted(PUBLISHED):
        if port_open(host, port):
            raise DeployTestError(f"{host}:{port} is in use (a `make up` or another stack?): the compose file "
                                  "publishes it; stop what listens there first")


def up(compose: Compose, pump: HealthPump, report: StackReport) -> None:
    started = time.monotonic()
    log("docker compose up -d --wait (the models job first, then every service until healthy)")
    compose.run("up", "-d", "--no-build", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 120)
    report.up_seconds = time.monotonic() - started
    for c in compose.ps():
        name, service = c["Name"], c["Service"]
        if service == "models":
            if c["State"] != "exited" or c["ExitCode"] != 0:
                raise DeployTestError(f"the models job did not finish cleanly: {c['State']} ({c['ExitCode']})")
            continue
        if c["State"] != "running" or c["Health"] != "healthy":
            raise DeployTestError(f"{service} is {c['State']} / {c['Health'] or 'no health'}")
        seconds = pump.seconds_to_healthy(name)
        report.healthy_seconds[service] = seconds if seconds is not None else float("nan")
        report.healthy_since_up[service] = pump.healthy_since.get(name, float("nan")) - started
    volume = json.loads(podman("volume", "inspect", f"{PROJECT}_models", capture=True).stdout)[0]["Mountpoint"]
    log(f"every service healthy after {report.up_seconds:.0f} s; the models volume holds {sorted(os.listdir(volume))}")


def post_json(path: str, body: dict[str, Any], timeout_s: float = 300) -> Any:
    request = urllib.request.Request(UI_URL + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as r:  # noqa: S310 - the stack's own loopback URL
        return json.loads(r.read())


def ask_paris() -> None:
    """POST /api/model/process through nginx: the answer must be Paris."""
    body = post_json("/api/model/process", {"text": QUESTION, "metadata": {"type": "text_generation"}})
    if body.get("text") != ANSWER:
        raise DeployTestError(f"/api/model/process through nginx answered {body!r}")


def stream_paris() -> int:
    """A streamed /v1/chat/completions through nginx: server-sent chunks that add up to Paris. Returns the count."""
    payload = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True,
               "temperature": 0, "max_tokens": 32}
    request = urllib.request.Request(UI_URL + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    text, chunks = [], 0
    with urllib.request.urlopen(request, timeout=300) as r:  # noqa: S310 - the stack's own loopback URL
        if not r.headers.get("Content-Type", "").startswith("text/event-stream"):
            raise DeployTestError(f"streamed chat through nginx is not an event stream: {r.headers}")
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("content"):
                text.append(delta["content"])
                chunks += 1
    if "".join(text) != ANSWER or chunks < 2:
        raise DeployTestError(f"streamed chat through nginx gave {''.join(text)!r} in {chunks} chunk(s)")
    return chunks


def check_ui() -> None:
    with urllib.request.urlopen(UI_URL + "/", timeout=30) as r:  # noqa: S310 - the stack's own loopback URL
        page = r.read().decode()
    if '<div id="root">' not in page:
        raise DeployTestError("the frontend did not serve the web UI's index.html")


def check_ports(compose: Compose) -> None:
    """Only the API and the UI are published, on the host's loopback; nothing else answers from the host."""
    published = {(p["URL"], p["PublishedPort"]) for c in compose.ps() for p in (c.get("Publishers") or [])
                 if p.get("PublishedPort")}
    if published != PUBLISHED:
        raise DeployTestError(f"published ports {sorted(published)}, expected {sorted(PUBLISHED)}")
    for host, port in PUBLISHED:
        if not port_open(host, port):
            raise DeployTestError(f"{host}:{port} is published but does not answer")
    outside = host_address()
    closed = [("127.0.0.1", port) for port in INTERNAL_PORTS]
    if outside is not None:
        closed += [(outside, port) for _, port in PUBLISHED] + [(outside, port) for port in INTERNAL_PORTS]
    reachable = [f"{h}:{p}" for h, p in closed if port_open(h, p)]
    if reachable:
        raise DeployTestError(f"reachable from the host but not meant to be: {reachable}")


def kill_node(compose: Compose, pump: HealthPump, report: StackReport) -> None:
    """kill -9 of a node container's process: the restart policy brings it back, the coordinator loads its shard
    again, and the model answers Paris through nginx once more."""
    name = next(c["Name"] for c in compose.ps() if c["Service"] == KILLED_NODE)
    before = inspect(name)
    log(f"kill -9 of {name} (pid {before['State']['Pid']}, restart policy "
        f"{before['HostConfig']['RestartPolicy']['Name']})")
    killed_at = time.monotonic()
    os.kill(before["State"]["Pid"], signal.SIGKILL)
    deadline = killed_at + UP_TIMEOUT_S
    while True:
        state = inspect(name)
        restarted = state["RestartCount"] > before["RestartCount"]
        if restarted and pump.healthy_since_start(name, state["State"]["StartedAt"]):
            break
        if time.monotonic() > deadline:
            raise DeployTestError(f"{name} not back and healthy {UP_TIMEOUT_S} s after the kill: {state['State']}")
        time.sleep(1)
    report.restart_count = state["RestartCount"]
    log(f"{name} restarted ({state['RestartCount']}) and healthy {time.monotonic() - killed_at:.0f} s after the kill "
        f"({pump.seconds_to_healthy(name):.0f} s after its new start)")
    while True:
        try:
            ask_paris()
            break
        except (OSError, DeployTestError) as e:  # the shard is being loaded again: 503 until then
            if time.monotonic() > deadline:
                raise DeployTestError(f"the model does not answer after the node came back: {e}") from e
            time.sleep(2)
    report.node_back_seconds = time.monotonic() - killed_at


def log_unhealthy(compose: Compose) -> None:
    """After a failure: the last lines of every container that is not running healthy (what went wrong, and where)."""
    try:
        containers = compose.ps()
    except DeployTestError:
        return
    for c in containers:
        if c["State"] == "running" and c.get("Health") in ("healthy", ""):
            continue
        tail = podman("logs", "--tail", "25", c["Name"], check=False, capture=True, timeout=60)
        health = c.get("Health") or "no health"
        log(f"{c['Name']} ({c['State']}, {health}), its last lines:\n{tail.stdout}{tail.stderr}")


def down(compose: Compose) -> None:
    """`docker compose down -v`, then nothing of the project may remain: containers, network, volumes, ports."""
    compose.run("down", "-v", "--remove-orphans", "--timeout", "30", timeout=600)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {
        "containers": podman("ps", "-a", "-q", "--filter", label, capture=True).stdout.split(),
        "networks": [n for n in podman("network", "ls", "--format", "{{.Name}}", capture=True).stdout.split()
                     if n.startswith(PROJECT)],
        "volumes": podman("volume", "ls", "-q", "--filter", label, capture=True).stdout.split(),
        "ports": [f"{h}:{p}" for h, p in sorted(PUBLISHED) if port_open(h, p)],
    }
    if any(left.values()):
        raise DeployTestError(f"left behind after docker compose down -v: {left}")
    log("docker compose down -v: no container, network, volume or port binding left")
