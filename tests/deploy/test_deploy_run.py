"""The deployment run for real (issue 23): `python -m ops.deploy_test`, exactly what `make deploy-test` runs, builds
every image of docker-compose.yml with podman, starts the stack with the Docker Compose CLI, asks Paris through the
frontend's nginx (plain and streamed), checks the published ports, kills a node container and waits for its restart
policy and the model, brings everything down and checks that nothing is left, then plays what podman accepts of k8s/.

Skipped, with the reason, where no container runtime can be set up (no podman and no apt-get as root to install it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_RUNTIME_EXIT = 2  # ops.deploy_test's exit code when no container runtime can be set up

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(3600)  # a cold first run installs podman, makes the bases and builds every image
def test_deploy_for_real() -> None:
    result = subprocess.run([sys.executable, "-m", "ops.deploy_test"], cwd=ROOT, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode == NO_RUNTIME_EXIT:
        pytest.skip(result.stderr.strip())
    log = result.stdout + result.stderr
    sys.stdout.write(log[-20000:])  # shown by pytest -rA / on failure: the steps and their timings
    assert result.returncode == 0, log[-6000:]
    for step in ("no image carries a model, a key or a certificate",
                 "every service healthy",
                 "answer Paris",
                 "published: only 127.0.0.1:8000 and 127.0.0.1:5173",
                 "answers Paris again",
                 "no container, network, volume or port binding left",
                 "Deployment's container is healthy",
                 "deploy-test passed"):
        assert step in log, step
