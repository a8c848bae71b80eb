"""What machine and tree a benchmark ran on: CPUs, memory, versions, the commit and uncommitted changes."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

from bench.procs import REPO


def _git(*a: str) -> str:
    r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
    return r.stdout.rstrip() if r.returncode == 0 else ""  # keep porcelain's leading status columns


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    cpu_model = ""
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0.0
    try:
        mem = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) / 1024**2
    except (OSError, StopIteration):
        pass
    dirty = [ln for ln in _git("status", "--porcelain").splitlines() if ln and not ln[3:].startswith("bench/")]
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": round(mem, 1),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(dirty), "git_dirty_files": dirty[:20]}
