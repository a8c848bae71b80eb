"""python -m ops.healthcheck ROLE: exit 0 when the local service of that role is serving, 1 otherwise.

The HEALTHCHECK of every container image. ROLE is ``coordinator``, ``tokenizer`` or ``node`` (the standard gRPC
health service, which says NOT_SERVING while a service drains) or ``api`` (GET /health). The port comes from
config.json ($SHARDLINE_CONFIG, after $SHARDLINE_ADDRESSES; a node is picked by $SHARDLINE_NODE_ID or
$SHARDLINE_NODE_INDEX), and the check goes to 127.0.0.1, the container itself. ``--address host:port`` skips
the config. Every check has a deadline (``--timeout``), so a hung service fails it instead of hanging it.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import security
from protos.config import Config, ConfigError, default_config_path, load_config

ROLES = ("coordinator", "tokenizer", "node", "api")


def local_target(role: str, config: Config) -> tuple[int, str]:
    """(port, name) of the local service of ``role``: the name picks its certificate when TLS is on."""
    if role == "coordinator":
        return int(config.coordinator.address.rsplit(":", 1)[1]), "coordinator"
    if role == "tokenizer":
        return int(config.tokenizer.address.rsplit(":", 1)[1]), "tokenizer"
    if role == "api":
        return config.api.port, "api"
    node_id = os.environ.get("SHARDLINE_NODE_ID", "")
    index = os.environ.get("SHARDLINE_NODE_INDEX", "")
    if node_id:
        return config.node(node_id).port, node_id
    if index.isdigit() and int(index) < len(config.nodes):
        return config.nodes[int(index)].port, config.nodes[int(index)].id
    raise ConfigError("role node needs $SHARDLINE_NODE_ID or $SHARDLINE_NODE_INDEX (or --address) to find its port")


def check_grpc(address: str, timeout_s: float) -> str | None:
    """None when SERVING, else what is wrong."""
    with security.channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            return f"{address}: {e.code().name}: {e.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, timeout_s: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - a fixed local http URL
            return None if r.status == 200 else f"{url}: HTTP {r.status}"
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.healthcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=ROLES)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--address", default="", help="host:port to check instead of the configured port on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=3.0, help="deadline of the check in seconds")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config) if not args.address or Path(args.config).is_file() else None
        port, name = local_target(args.role, config) if config else (0, "client")
        address = args.address or f"127.0.0.1:{port}"
        security.install(security.load_for(config, name))
    except (ConfigError, KeyError) as e:
        sys.stderr.write(f"healthcheck {args.role}: {e}\n")
        return 1
    problem = (check_http(f"http://{address}/health", args.timeout) if args.role == "api"
               else check_grpc(address, args.timeout))
    if problem:
        sys.stderr.write(f"healthcheck {args.role}: not serving: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
