"""The load test's cluster and its processes: the bench's own cluster (the real launcher on a derived config, fresh
loopback ports), each process's name, CPU seconds, open fds and file limit from /proc."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

from bench.procs import REPO
from ops.launched import LaunchedCluster, process_name
from ops.ports import free_ports

READY_TIMEOUT_S = 900.0


def raise_nofile(want: int) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to ``want`` (capped by the hard limit); children started after inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def derive_config(base: dict[str, Any], kv_cache_tokens: int = 0) -> dict[str, Any]:
    """The same models and nodes on fresh loopback ports, metrics ports off, an absolute model cache (and every
    model's KV budget set to ``kv_cache_tokens`` unless 0)."""
    cfg = json.loads(json.dumps(base))
    if kv_cache_tokens:
        for m in cfg["models"]:
            m["kv_cache_tokens"] = kv_cache_tokens
    ports = iter(free_ports(len(cfg["nodes"]) + 3))
    for node in cfg["nodes"]:
        node["address"] = f"127.0.0.1:{next(ports)}"
        node.pop("metrics_port", None)
    for key in ("coordinator", "tokenizer"):
        cfg.setdefault(key, {})
        cfg[key]["address"] = f"127.0.0.1:{next(ports)}"
        cfg[key].pop("metrics_port", None)
    cfg.setdefault("api", {})
    cfg["api"]["host"] = "127.0.0.1"
    cfg["api"]["port"] = next(ports)
    cache = Path(cfg.get("model_cache_dir", ".cache/models"))
    cfg["model_cache_dir"] = str(cache if cache.is_absolute() else (REPO / cache).resolve())
    return cfg


def start_own_cluster(config: dict[str, Any], work: Path) -> LaunchedCluster:
    """The real launcher (`python -m ops.launcher`) on ``config`` in ``work`` (logs in work/run), until ready."""
    return LaunchedCluster.start(config, work, READY_TIMEOUT_S)


def cluster_processes(launcher_pid: int) -> dict[str, int]:
    """name -> pid of the launcher and its children (tokenizer, nodes, coordinator, api)."""
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True, timeout=30)
    procs = {"launcher": launcher_pid}
    for pid in (int(p) for p in out.stdout.split()):
        name = process_name(pid)
        if name:
            procs[name] = pid
    return procs


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def machine_busy_s() -> float:
    """CPU seconds spent by every core on anything but idle / iowait since boot."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def nofile_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None
