"""Which processes a local cluster runs, and with which command lines: the tokenizer, every shard node, the
coordinator, the API (and Prometheus when asked)."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Collection
from pathlib import Path

from ops.children import NODE_ENV, Child
from ops.prometheus_config import local_config
from protos.config import Config, NodeConfig

logger = logging.getLogger("shardline.up")
STATE_FILE = "children.json"  # in the run dir: each child's state and restarts
STATE_ENV = "SHARDLINE_LAUNCHER_STATE"  # tells the API where that file is (its /api/cluster shows it)
SERVICES = ("tokenizer", "nodes", "coordinator", "api")  # every service kind, in start order
NodePrefix = Callable[[NodeConfig], list[str]]  # argv put before a node's command (e.g. `ip netns exec ns1`)


def prometheus_child(config: Config, run_dir: Path, port: int) -> Child | None:
    """A real Prometheus on 127.0.0.1:port scraping every local process, or None (with how to get it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        logger.warning("prometheus is not installed, so metrics are not collected: apt-get install prometheus "
                       "(Debian), or see prometheus.io/download; every service still serves /metrics")
        return None
    cfg = run_dir / "prometheus.yml"
    cfg.write_text(local_config(config))
    return Child("prometheus", [binary, f"--config.file={cfg}", f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
                                f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
                                "--log.level=warn"], run_dir / "prometheus.log")


def node_child(node: NodeConfig, threads: int, cfg: str, log: list[str], run_dir: Path,
               prefix: list[str] | None = None) -> Child:
    argv = [sys.executable, "-m", "shard_node", "--config", cfg, "--host", node.host, "--port", str(node.port),
            "--node-id", node.id, "--threads", str(threads), "--memory-mb", str(node.memory_mb),
            "--metrics-port", str(node.metrics_port or 0), *log]
    return Child(node.id, [*(prefix or []), *argv], run_dir / f"{node.id}.log", env=NODE_ENV)


def plan_children(config: Config, config_path: Path, run_dir: Path, log_level: str, log_format: str = "text",
                  services: Collection[str] = SERVICES, node_prefix: NodePrefix | None = None) -> list[Child]:
    """The children of ``services`` (all by default), in start order; ``node_prefix`` wraps a node's command."""
    py, cfg = sys.executable, str(config_path)
    log = ["--log-level", log_level, "--log-format", log_format]
    children = []
    if "tokenizer" in services:
        children.append(Child("tokenizer", [py, "-m", "tokenizer_svc", "--config", cfg, *log],
                              run_dir / "tokenizer.log"))
    local = list(config.nodes)  # spare nodes too: models added at runtime and replicas are placed on them
    if "nodes" in services:
        for node in local:
            prefix = node_prefix(node) if node_prefix else None
            children.append(node_child(node, node.threads, cfg, log, run_dir, prefix))  # 0: cores shared
    if "coordinator" in services:
        children.append(Child("coordinator", [py, "-m", "coordinator", "--config", cfg, *log],
                              run_dir / "coordinator.log"))
    if "api" in services:
        children.append(Child("api", [py, "-m", "api", "--config", cfg, *log], run_dir / "api.log",
                              env={STATE_ENV: str(run_dir / STATE_FILE)}))
    return children
