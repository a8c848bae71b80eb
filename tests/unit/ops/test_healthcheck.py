"""ops/healthcheck.py: the container HEALTHCHECK command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_healthcheck_fails_with_a_reason_when_nothing_serves() -> None:
    r = subprocess.run([sys.executable, "-m", "ops.healthcheck", "tokenizer", "--address", "127.0.0.1:9",
                        "--timeout", "1"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 1
    assert "not serving" in r.stderr and "127.0.0.1:9" in r.stderr
