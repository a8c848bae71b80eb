"""`make deploy-test`: the deployment run for real, in one command.

    python -m ops.deploy_test            # build every image, run the compose stack, check it, clean up
    python -m ops.deploy_test build      # only build the images (prints each one's build time and size)
    python -m ops.deploy_test kube       # only podman kube play of k8s/ (the images must have been built)
    python -m ops.deploy_test --keep     # leave the stack running afterwards (docker compose -p ... down -v ends it)

Steps: podman installed where missing (apt); the images of docker-compose.yml built from their Dockerfiles
(ops/deploy_test/images.py); no image may hold a model, a key or a certificate; `docker compose up --wait` with the
real Compose CLI against podman's Docker API, healthchecks run on their schedule (health.py); Paris through nginx,
published ports only, a node killed and back (stack.py); `docker compose down -v` leaves nothing; then the k8s/
manifests that `podman kube play` accepts (kube.py). Exit 0 when every step passed, 1 with the reason otherwise,
2 when no container runtime can be set up here."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time

from ops.deploy_test import images, kube, stack, yaml_files
from ops.deploy_test.health import HealthPump
from ops.deploy_test.runtime import (
    COMPOSE_FILE,
    PROJECT,
    WORK,
    ApiService,
    Compose,
    DeployTestError,
    ensure_podman,
    log,
    runtime_missing,
)

NO_RUNTIME_EXIT = 2


def build_step() -> list[images.Built]:
    ensure_podman()
    started = time.monotonic()
    images.ensure_bases()
    built = images.build_images(yaml_files.load(COMPOSE_FILE))
    for b in built:
        log(f"image {b.image}: {b.size_bytes / 1e6:.0f} MB, built in {b.seconds:.0f} s")
    log(f"built {len(built)} images in {time.monotonic() - started:.0f} s (bases and stand-ins included)")
    for b in built:
        bad = images.forbidden_files(b.image)
        if bad:
            raise DeployTestError(f"{b.image} carries what no image may (a model, a key or a certificate): {bad[:10]}")
    log("no image carries a model, a key or a certificate")
    return built


def stack_step(keep: bool) -> stack.StackReport:
    api, pump, report = ApiService(), HealthPump(), stack.StackReport()
    api.start()
    compose = Compose(api)
    pump.start()
    try:
        stack.preflight(compose)
        stack.up(compose, pump, report)
        stack.check_ui()
        stack.ask_paris()
        report.stream_chunks = stack.stream_paris()
        log(f"through nginx: /api/model/process and a streamed chat ({report.stream_chunks} chunks) answer Paris")
        stack.check_ports(compose)
        log("published: only 127.0.0.1:8000 and 127.0.0.1:5173; the gRPC ports answer nobody on the host")
        stack.kill_node(compose, pump, report)
        log(f"the model answers Paris again {report.node_back_seconds:.0f} s after the kill")
        for service, seconds in sorted(report.healthy_since_up.items(), key=lambda kv: kv[1]):
            log(f"service {service}: healthy {seconds:.0f} s after `up` began, "
                f"{report.healthy_seconds[service]:.0f} s after its container started")
    except (DeployTestError, OSError):
        stack.log_unhealthy(compose)
        raise
    finally:
        if not keep:
            stack.down(compose)
        pump.stop()
        api.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", nargs="?", choices=["all", "build", "kube"], default="all")
    p.add_argument("--keep", action="store_true", help=f"leave the stack (project {PROJECT}) running")
    p.add_argument("--skip-kube", action="store_true", help="skip podman kube play of k8s/")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s deploy-test: %(message)s", datefmt="%H:%M:%S")
    missing = runtime_missing()
    if missing is not None:
        sys.stderr.write(f"deploy-test: no container runtime here: {missing}\n")
        return NO_RUNTIME_EXIT
    WORK.mkdir(parents=True, exist_ok=True)
    last_run = logging.FileHandler(WORK / "last-run.log", mode="w")  # the steps and timings, kept after the run
    last_run.setFormatter(logging.Formatter("%(asctime)s deploy-test: %(message)s", datefmt="%H:%M:%S"))
    logging.getLogger("deploy-test").addHandler(last_run)
    started = time.monotonic()
    try:
        if args.step == "kube":
            ensure_podman()
            kube.play_step()
        else:
            build_step()
        if args.step == "all":
            stack_step(args.keep)
            if not args.skip_kube and not args.keep:
                kube.play_step()
    except (DeployTestError, OSError) as e:  # OSError: a request to the stack (urllib), a file
        log(f"FAILED: {e}")
        return 1
    except subprocess.CalledProcessError as e:
        log(f"FAILED: {' '.join(map(str, e.cmd))} exited {e.returncode}: {(e.stderr or '').strip()[-2000:]}")
        return 1
    log(f"deploy-test passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
