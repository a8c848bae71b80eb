"""Every image of docker-compose.yml built for real, with podman, from the same Dockerfiles and targets a user's
`docker compose build` uses. What differs on a machine without a registry is passed in, never edited in: the base
images (local stand-ins, docker/podman/*.Containerfile, on a Debian made with debootstrap), the host's CA bundle as the
build secret `ca_bundle`, and the local torch CPU wheel served to the build as TORCH_FIND_LINKS. The build cache
(podman's layers) is kept between runs."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.deploy_test.runtime import CA_BUNDLE, ROOT, WORK, DeployTestError, log, podman, podman_env

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_BASE = "localhost/debian-base:bookworm"
PODMAN_DIR = ROOT / "docker" / "podman"
WHEEL_PORT = 18799  # the local torch wheel's folder, served to the builds
# build argument -> (stand-in image, its Containerfile in docker/podman/)
STAND_INS = {
    "PYTHON_IMAGE": ("localhost/python-standin:3.11-bookworm", "python-standin.Containerfile"),
    "NODE_IMAGE": ("localhost/node-standin:20-bookworm", "node-standin.Containerfile"),
    "NGINX_IMAGE": ("localhost/nginx-unprivileged-standin:bookworm", "nginx-standin.Containerfile"),
}


@dataclass
class Built:
    service: str
    image: str
    seconds: float
    size_bytes: int


def have_image(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_debian_base() -> None:
    """A Debian bookworm base made locally (debootstrap) and imported, once."""
    if have_image(DEBIAN_BASE):
        return
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"making {DEBIAN_BASE} with debootstrap")
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR], check=True,
                   stdout=subprocess.DEVNULL)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", DEBIAN_BASE], stdin=tar.stdout, env=podman_env(), check=True,
                   stdout=subprocess.DEVNULL)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def host_node() -> tuple[Path, Path]:
    """The host's Node.js binary and its npm folder (the node stand-in's content)."""
    node = shutil.which("node")
    if node is None:
        raise DeployTestError("node not found: the web UI's build stand-in copies the host's Node.js 20.19+")
    binary = Path(node).resolve()
    npm = binary.parent.parent / "lib" / "node_modules" / "npm"
    if not npm.is_dir():
        raise DeployTestError(f"npm not found beside {binary} (looked in {npm})")
    return binary, npm


@contextmanager
def stand_in_context(containerfile: str) -> Iterator[Path]:
    """The build context of a stand-in: docker/podman/, or for Node a temporary copy with the host's node and npm."""
    if containerfile != "node-standin.Containerfile":
        yield PODMAN_DIR
        return
    binary, npm = host_node()
    with tempfile.TemporaryDirectory(dir=WORK) as folder:
        shutil.copy2(binary, Path(folder) / "node")
        shutil.copytree(npm, Path(folder) / "npm", symlinks=True)
        yield Path(folder)


def ensure_bases() -> None:
    """The Debian base and the stand-ins built on it (layer cache: quick when nothing changed)."""
    ensure_debian_base()
    for image, containerfile in STAND_INS.values():
        with stand_in_context(containerfile) as context:
            podman("build", "--pull=never", "--network", "host", "-q", "-t", image,
                   "-f", str(PODMAN_DIR / containerfile), str(context), capture=True)


def torch_wheel_dir() -> Path | None:
    """The local folder holding the torch CPU wheel (pip's find-links on this machine), if any."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "find-links" in line:
            folder = Path(line.split("=", 1)[1].strip().strip("'\""))
            if any(folder.glob("torch-2.13.0*.whl")):
                return folder
    return None


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Each request line would drown the build's own output."""


def serve(folder: Path) -> str:
    """Serves ``folder`` on the loopback for the builds (they run with the host's network); returns its URL, the same
    each run where the port is free (the URL is a build argument: another would rebuild the torch layers)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEEL_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def machine_build_args() -> list[str]:
    """What differs on this machine, as build arguments and a secret (unused ones are ignored by a build)."""
    extra = [f"--build-arg={arg}={image}" for arg, (image, _) in STAND_INS.items()]
    if CA_BUNDLE.is_file():
        extra.append(f"--secret=id=ca_bundle,src={CA_BUNDLE}")
    wheels = torch_wheel_dir()
    if wheels is not None:
        extra += ["--build-arg=TORCH_INDEX_URL=https://pypi.org/simple",
                  f"--build-arg=TORCH_FIND_LINKS={serve(wheels)}"]
    return extra


def build_images(compose: dict[str, Any]) -> list[Built]:
    """Each distinct image of the compose file, built as `docker compose build` would (its context, Dockerfile,
    target and args), with this machine's differences passed in."""
    extra = machine_build_args()
    out, seen = [], set()
    for name, service in compose["services"].items():
        build = service.get("build")
        if not build or service["image"] in seen:
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


# what no image may carry: weights of a model (any .gguf or .safetensors, a torch checkpoint over 1 MB), a private
# key, a certificate of ours (public trust stores are not: the system's, certifi's and gRPC's CA roots, doc examples)
MODEL_SUFFIXES = (".gguf", ".safetensors")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")  # and pytorch_model*.bin
TORCH_FILE_LIMIT = 1 << 20
CERT_SUFFIXES = (".pem", ".crt", ".key", ".p12", ".pfx")
TRUST_STORES = ("etc/ssl/", "usr/lib/ssl/", "usr/share/ca-certificates/", "etc/ca-certificates",
                "usr/local/share/ca-certificates/", "usr/share/doc/", "certifi/cacert.pem",
                "grpc/_cython/_credentials/roots.pem")
PRIVATE_KEY = re.compile(rb"^-----BEGIN [A-Z ]*PRIVATE KEY-----$", re.MULTILINE)


def forbidden_files(image: str) -> list[str]:
    """Paths in ``image`` that look like a model, a key or a certificate (read from its mounted file system)."""
    mount = podman("image", "mount", image, capture=True).stdout.strip()
    try:
        found = []
        for folder, _, files in os.walk(mount):
            for name in files:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, mount)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                if (name.endswith(MODEL_SUFFIXES)
                        or ((name.endswith(TORCH_SUFFIXES) or name.startswith("pytorch_model"))
                            and os.path.getsize(path) > TORCH_FILE_LIMIT)
                        or (name.endswith(CERT_SUFFIXES) and not any(t in rel for t in TRUST_STORES))
                        or _holds_private_key(path)):
                    found.append(rel)
        return found
    finally:
        podman("image", "unmount", image, capture=True, check=False)


def _holds_private_key(path: str) -> bool:
    try:
        if os.path.getsize(path) > 64 * 1024:
            return False
        with open(path, "rb") as f:
            return PRIVATE_KEY.search(f.read()) is not None
    except OSError:
        return False
