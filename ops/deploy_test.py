"""`make deploy-test`, part one: every image of docker-compose.yml built for real, with podman, from the same
Dockerfiles and targets a user's `docker compose build` uses. What differs on a machine without a registry is passed
in, never edited in: the base images (local stand-ins, docker/podman/*.Containerfile, on a Debian made with
debootstrap), the host's CA bundle as the build secret `ca_bundle`, and the local torch CPU wheel served to the build
as TORCH_FIND_LINKS. The build cache (podman's layers) is kept between runs.

    python -m ops.deploy_test build        # prints each image's build time and size

Not yet: the web UI image (its Node 20 and unprivileged-nginx stand-ins), starting the compose stack, the node kill,
the cleanup, `podman kube play` of k8s/ (issue 23)."""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "docker" / "podman" / "containers.conf"
WORK = Path("/var/tmp/shardline-deploy-test")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_PACKAGES = ["podman", "runc", "uidmap", "slirp4netns", "fuse-overlayfs",
                "golang-github-containernetworking-plugin-dnsname", "debootstrap"]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEEL_PORT = 18799  # the local torch wheel's folder, served to the builds
DEBIAN_BASE = "localhost/debian-base:bookworm"
STAND_INS = {"PYTHON_IMAGE": ("localhost/python-standin:3.11-bookworm", "python-standin.Containerfile")}
NOT_YET = {"frontend"}  # services whose image this step does not build yet


logger = logging.getLogger("deploy-test")


def log(msg: str) -> None:
    logger.info("%s", msg)


def podman(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], env=env, check=check, text=True,
                          capture_output=capture)


def ensure_podman() -> None:
    """Installs podman and what it needs here (as `make setup` installs chromium), when missing."""
    if shutil.which("podman") and shutil.which("debootstrap"):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        sys.exit("podman is not installed and cannot be installed here (needs apt-get as root)")
    log("installing podman (apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], check=True)


def have_image(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_bases() -> None:
    """A Debian bookworm base made locally (debootstrap), and the stand-ins built on it."""
    if not have_image(DEBIAN_BASE):
        rootfs = WORK / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        log(f"making {DEBIAN_BASE} with debootstrap")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        subprocess.run(["podman", "import", "-", DEBIAN_BASE], stdin=tar.stdout, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        tar.wait()
        shutil.rmtree(rootfs, ignore_errors=True)
    for image, containerfile in STAND_INS.values():
        podman("build", "--pull=never", "-q", "-t", image, "-f", str(ROOT / "docker" / "podman" / containerfile),
               str(ROOT / "docker" / "podman"), capture=True)


def torch_wheel_dir() -> Path | None:
    """The local folder holding the torch CPU wheel (pip's find-links on this machine), if any."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "find-links" in line:
            folder = Path(line.split("=", 1)[1].strip().strip("'\""))
            if any(folder.glob("torch-2.13.0*.whl")):
                return folder
    return None


def serve(folder: Path) -> str:
    """Serves ``folder`` on the loopback for the builds (they run with the host's network); returns its URL, the same
    each run where the port is free (the URL is a build argument: another would rebuild the torch layers)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


@dataclass
class Built:
    service: str
    image: str
    seconds: float
    size_bytes: int


def build_images(compose: dict[str, Any]) -> list[Built]:
    """Each distinct image of the compose file, built as `docker compose build` would (its context, Dockerfile,
    target and args), with this machine's differences passed in."""
    extra = [f"--build-arg={arg}={image}" for arg, (image, _) in STAND_INS.items()]
    if CA_BUNDLE.is_file():
        extra.append(f"--secret=id=ca_bundle,src={CA_BUNDLE}")
    wheels = torch_wheel_dir()
    if wheels is not None:
        extra += ["--build-arg=TORCH_INDEX_URL=https://pypi.org/simple",
                  f"--build-arg=TORCH_FIND_LINKS={serve(wheels)}"]
    out, seen = [], set()
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build or service["image"] in seen or name in NOT_YET:
            continue
        seen.add(service["image"])
        args = [f"--build-arg={k}={v}" for k, v in (build.get("args") or {}).items() if "${" not in str(v)]
        target = ["--target", build["target"]] if build.get("target") else []
        started = time.monotonic()
        log(f"building {service['image']} ({build['dockerfile']}{' target ' + build['target'] if target else ''})")
        podman("build", "--format", "docker", "--pull=never", "--network", "host", *extra, *args, *target,
               "-t", service["image"], "-f", str(ROOT / build["dockerfile"]), str(ROOT / build.get("context", ".")))
        size = int(podman("image", "inspect", "--format", "{{.Size}}", service["image"], capture=True).stdout.strip())
        out.append(Built(name, service["image"], time.monotonic() - started, size))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["build"])
    p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s deploy-test: %(message)s", datefmt="%H:%M:%S")
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ensure_podman()
    ensure_bases()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    built = build_images(compose)
    for b in built:
        log(f"{b.image}: {b.size_bytes / 1e6:.0f} MB, built in {b.seconds:.0f} s")
    log(f"built {len(built)} image(s) in {time.monotonic() - started:.0f} s (not yet: {', '.join(sorted(NOT_YET))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
