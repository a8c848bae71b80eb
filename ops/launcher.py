"""shardline up: the whole local cluster as child processes (tokenizer, nodes, coordinator, API).

Waits until every process is ready, prints the API URL and each node's layer range, writes each
process's log under a run folder, and stops every child on Ctrl-C / SIGTERM (children also get
SIGTERM from the kernel if the launcher itself is killed, so none are orphaned). Once up, it
supervises them like a process manager: a child that exits is started again after a backoff (1 s,
doubling to 30 s; back to 1 s once it has run for a minute), and the coordinator loads a restarted
node's shard again by itself. A child that crash-loops (5 restarts in a row, each exiting within a minute
of its start) is left down: the launcher says so in its log and in run/children.json, which /api/cluster
shows. Each child's output goes to <run dir>/<name>.log, rotated at 20 MiB with 3 old files kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from ops.cluster import LocalCluster
from ops.plan import prometheus_child
from ops.prometheus_config import scrape_targets
from protos import security
from protos.config import Config, ConfigError, default_config_path, load_config
from protos.runtime import add_log_args, setup_logging

logger = logging.getLogger("shardline.up")
SUPERVISE_EVERY_S = 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shardline up", description=__doc__)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--run-dir", default=None, help="folder for logs (default: .run/<timestamp>)")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for every process")
    p.add_argument("--prometheus", type=int, default=0, metavar="PORT",
                   help="also run a real Prometheus on 127.0.0.1:PORT scraping every process (make up: 9090; 0 = no)")
    add_log_args(p)
    return p.parse_args(argv)


def load_checked(args: argparse.Namespace, config_path: Path) -> Config:
    """The config, with the launcher's client security installed and every model prepared; else exits."""
    try:
        config = load_config(config_path)
        sec = security.install(security.load_for(config, "client"))  # its health checks and ListModels
    except ConfigError as e:
        sys.exit(f"shardline up: {e}")
    logger.info("links between services: %s", sec.describe())
    missing = [m.name for m in config.models if not (config.model_dir(m.name) / "config.json").is_file()]
    if missing:
        sys.exit(f"shardline up: model(s) {missing} not prepared in {config.model_cache_dir}; run "
                 f"`shardline models --config {args.config}` (make up does it)")
    return config


def build_cluster(args: argparse.Namespace, config: Config, config_path: Path, run_dir: Path) -> LocalCluster:
    cluster = LocalCluster.plan(config, config_path, run_dir, args.log_level, args.log_format)
    prometheus = prometheus_child(config, run_dir, args.prometheus) if args.prometheus else None
    if prometheus:
        cluster.children.append(prometheus)
        cluster.prometheus_port = args.prometheus
    return cluster


def announce_ready(cluster: LocalCluster, run_dir: Path, prometheus_port: int) -> None:
    """ready.json (the API URL and each model's layout) and the log lines saying where everything is."""
    config = cluster.config
    layout = cluster.describe()
    (run_dir / "ready.json").write_text(json.dumps({"api": f"http://{config.api.host}:{config.api.port}",
                                                     "models": layout}, indent=2))
    for m in layout:
        for s in m["stages"]:
            logger.info("model %s: node %s (%s) holds layers [%d, %d)", m["model"], s["node"], s["address"],
                        *s["layers"])
    if cluster.prometheus_port:
        logger.info("Prometheus on http://127.0.0.1:%d scraping %s", prometheus_port,
                    ", ".join(f"{job} ({len(t)})" for job, t in scrape_targets(config).items()))
    logger.info("Shardline is up: API on http://%s:%d  (logs in %s; Ctrl-C stops everything)",
                config.api.host, config.api.port, run_dir)


def run(cluster: LocalCluster, run_dir: Path, args: argparse.Namespace) -> int:
    """Starts the cluster, supervises it until a stop is asked, stops it; the exit code."""
    def on_signal(signum: int, frame: object) -> None:
        cluster.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster.start()
    code = 0
    try:
        cluster.wait_ready(args.ready_timeout)
        announce_ready(cluster, run_dir, args.prometheus)
        while not cluster.stopping:
            cluster.supervise()
            time.sleep(SUPERVISE_EVERY_S)
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        logger.error("%s", e)
        code = 1
    finally:
        logger.info("stopping every process")
        cluster.stop()
        logger.info("stopped")
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging("INFO", "up", args.log_format)
    config_path = Path(args.config).resolve()
    config = load_checked(args, config_path)
    run_dir = Path(args.run_dir or f".run/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    sys.exit(run(build_cluster(args, config, config_path, run_dir), run_dir, args))


if __name__ == "__main__":
    main()
