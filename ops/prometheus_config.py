"""The Prometheus scrape jobs of a cluster, from its config: one job per service kind, the same jobs as
``prometheus/prometheus.yml`` uses under docker compose, here with the config's own addresses."""

from __future__ import annotations

import json

from protos.config import Config

SCRAPE_INTERVAL_S = 5


def scrape_targets(config: Config) -> dict[str, list[str]]:
    """job -> host:port targets; services without a metrics port are left out."""
    def at(address: str, port: int) -> str:
        return f"{address.rsplit(':', 1)[0]}:{port}"

    jobs: dict[str, list[str]] = {"api": [f"{config.api.host}:{config.api.port}"]}
    if config.coordinator.metrics_port:
        jobs["coordinator"] = [at(config.coordinator.address, config.coordinator.metrics_port)]
    if config.tokenizer.metrics_port:
        jobs["tokenizer"] = [at(config.tokenizer.address, config.tokenizer.metrics_port)]
    nodes = [at(n.address, n.metrics_port) for n in config.nodes if n.metrics_port]
    if nodes:
        jobs["nodes"] = nodes
    return jobs


def _reachable(target: str) -> str:
    """A service listening on every address is scraped on loopback."""
    host, port = target.rsplit(":", 1)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]") else target


def local_config(config: Config, interval_s: int = SCRAPE_INTERVAL_S) -> str:
    """prometheus.yml for the local cluster (JSON, which is YAML too)."""
    scrape = [{"job_name": job, "static_configs": [{"targets": [_reachable(t) for t in targets]}]}
              for job, targets in scrape_targets(config).items()]
    return json.dumps({"global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
                       "scrape_configs": scrape}, indent=2) + "\n"
