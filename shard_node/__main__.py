"""python -m shard_node --port 50051: a shard node; the coordinator tells it what to load.

With ``--config`` and ``--node-id`` (or ``--node-index``), its port, metrics port, memory budget and threads come
from that node's entry in config.json (after ``SHARDLINE_ADDRESSES``); flags given on the command line win.
Containers run ``python -m shard_node --host 0.0.0.0`` with SHARDLINE_CONFIG and SHARDLINE_NODE_ID (or, in a
StatefulSet, SHARDLINE_NODE_INDEX from the pod's ordinal) in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import grpc
import torch

from protos import coordinator_pb2, coordinator_pb2_grpc, security, shard_pb2_grpc
from protos.config import (
    CONFIG_ENV,
    Config,
    ConfigError,
    CoordinatorConfig,
    LimitsConfig,
    NodeConfig,
    load_config,
)
from protos.model_spec import DEFAULT_KV_CACHE_TOKENS
from protos.runtime import (
    GRPC_OPTIONS,
    SERVING,
    add_health,
    add_log_args,
    serve_metrics,
    server_options,
    set_max_message_mb,
    setup_logging,
    wait_for_stop_signal,
)
from shard_node import metrics
from shard_node.cores import CoreShare
from shard_node.host import cpu_count
from shard_node.service import ShardNodeServicer

logger = logging.getLogger("shard_node")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shard_node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.environ.get(CONFIG_ENV, ""),
                   help="take this node's settings from config.json (default: $SHARDLINE_CONFIG; none = flags only)")
    p.add_argument("--node-id", default=os.environ.get("SHARDLINE_NODE_ID", ""),
                   help="this node's id: its entry in --config, and its name in logs and Info "
                        "(default: $SHARDLINE_NODE_ID, else node-<port>)")
    p.add_argument("--node-index", type=int, default=_env_int("SHARDLINE_NODE_INDEX"),
                   help="with --config and no --node-id: the node at this position of `nodes` (0-based, a "
                        "StatefulSet ordinal; default: $SHARDLINE_NODE_INDEX)")
    p.add_argument("--host", default=None, help="address to listen on (default: the configured host, else "
                                                 "127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=None, help="default: the configured port, else 50051")
    p.add_argument("--kv-cache-tokens", type=int, default=DEFAULT_KV_CACHE_TOKENS,
                   help="KV budget per shard when LoadShard does not give one")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per micro-batch (0 = the machine's cores shared among the shard nodes "
                        "busy at that moment)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memory budget for shards (weights + KV budgets) in MiB; LoadShard beyond it is refused "
                        "(0 = no limit)")
    p.add_argument("--drain-timeout", type=float, default=10.0,
                   help="on SIGTERM: seconds to let the sequences it holds finish (health says NOT_SERVING, so "
                        "the coordinator sends it no new ones) before it exits")
    p.add_argument("--join", default="", metavar="COORDINATOR",
                   help="register with this coordinator (host:port) at start, so a node that joins later is used "
                        "for new placements and replicas without a restart")
    p.add_argument("--advertise", default="",
                   help="the host:port the coordinator reaches this node at (default: --host:--port)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0 = off)")
    p.add_argument("--kv-idle-ttl", type=float, default=None, metavar="SECONDS",
                   help="free a KV cache no micro-batch touched for this long (default: limits.kv_idle_ttl_s, 600)")
    add_log_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; with --config, what they leave out comes from this node's entry (flags win)."""
    p = _parser()
    args = p.parse_args(argv)
    config = _load(p, args.config) if args.config else None
    entry = _config_entry(p, args, config) if config else None
    if entry is not None:
        args.node_id = entry.id
    try:
        security.install(security.load_for(config, args.node_id or f"node-{args.port or 50051}"))
    except ConfigError as e:
        p.error(str(e))
    if config:
        set_max_message_mb(config.limits.grpc_max_message_mb)
    defaults = {"host": entry.host if entry else "127.0.0.1", "port": entry.port if entry else 50051,
                "threads": entry.threads if entry else 0, "memory_mb": entry.memory_mb if entry else 0,
                "metrics_port": (entry.metrics_port or 0) if entry else 0,
                "kv_idle_ttl": (config.limits if config else LimitsConfig()).kv_idle_ttl_s}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _check_kv_idle_ttl(p, args.kv_idle_ttl, config)
    return args


def _check_kv_idle_ttl(p: argparse.ArgumentParser, ttl_s: float, config: Config | None) -> None:
    """The TTL must outlast any pause of a live sequence: one micro-batch may take coordinator.rpc_timeout_s on
    each stage before the coordinator gives up on it."""
    floor = (config.coordinator if config else CoordinatorConfig()).rpc_timeout_s
    if not ttl_s > floor:
        p.error(f"--kv-idle-ttl / limits.kv_idle_ttl_s must be above coordinator.rpc_timeout_s ({floor:.0f} s), or "
                f"live sequences would lose their KV caches; got {ttl_s:g}")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"shard node: ${name} must be an integer, got {value!r}") from None


def _load(p: argparse.ArgumentParser, path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        p.error(str(e))


def _config_entry(p: argparse.ArgumentParser, args: argparse.Namespace, config: Config) -> NodeConfig:
    ids = [n.id for n in config.nodes]
    if args.node_id:
        if args.node_id not in ids:
            p.error(f"--node-id {args.node_id!r} is not in {args.config}; its nodes are {ids}")
        return config.node(args.node_id)
    if args.node_index is None:
        p.error(f"--config needs --node-id or --node-index (or $SHARDLINE_NODE_ID / $SHARDLINE_NODE_INDEX) to pick "
                f"this node among {ids}")
    if not 0 <= args.node_index < len(ids):
        p.error(f"--node-index {args.node_index} is out of range: {args.config} has {len(ids)} nodes {ids} "
                f"(0-based)")
    return config.nodes[args.node_index]


async def join(coordinator: str, node_id: str, address: str) -> None:
    """Registers with the coordinator, retrying until it answers (it may start after this node)."""
    delay = 1.0
    async with security.aio_channel(coordinator, GRPC_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        while True:
            try:
                reply = await stub.RegisterNode(coordinator_pb2.RegisterNodeRequest(node_id=node_id, address=address),
                                                timeout=10.0)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
                                grpc.StatusCode.FAILED_PRECONDITION):  # refused for good (alias, token in clear)
                    logger.error("coordinator %s refused to register %s: %s", coordinator, node_id, e.details())
                    return
                logger.info("coordinator %s not reachable yet (%s); retrying in %.0f s", coordinator,
                            e.code().name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            logger.info("registered with coordinator %s as %s (%s)%s", coordinator, node_id, address,
                        "" if reply.added else "; it knew this node already")
            return


async def serve(args: argparse.Namespace) -> None:
    node_id = args.node_id or f"node-{args.port}"
    server = grpc.aio.server(options=server_options(), interceptors=security.server_interceptors())
    cores = CoreShare(cpu_count(), fixed_threads=max(0, args.threads))  # 0: share the cores with busy neighbours
    servicer = ShardNodeServicer(node_id, args.kv_cache_tokens, args.memory_mb * 2**20, cores)
    shard_pb2_grpc.add_ShardNodeServicer_to_server(servicer, server)
    health = add_health(server)
    address = f"{args.host}:{args.port}"
    if security.add_port(server, address) == 0:
        raise SystemExit(f"shard node {node_id}: cannot listen on {address} (port in use?)")
    await server.start()
    if args.metrics_port:
        metrics.register_state(servicer.node_info)
        serve_metrics(args.metrics_port, args.host, "shard_node")
    await health.set("", SERVING)
    reclaimer = asyncio.create_task(servicer.reclaim_idle_caches(args.kv_idle_ttl))
    logger.info("shard node %s listening on %s (%s; torch %s, %s); waiting for LoadShard", node_id,
                address, security.current().describe(), torch.__version__, cores.describe())
    joining = asyncio.create_task(join(args.join, node_id, args.advertise or address)) if args.join else None
    await wait_for_stop_signal()
    if joining:
        joining.cancel()
    await health.enter_graceful_shutdown()  # NOT_SERVING: the coordinator marks it draining
    held = servicer.num_sequences()
    logger.info("shard node %s stopping: draining %d sequence(s) for at most %.0f s", node_id, held,
                args.drain_timeout)
    deadline = asyncio.get_running_loop().time() + args.drain_timeout
    while servicer.num_sequences() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    left = servicer.num_sequences()
    if left:
        logger.warning("shard node %s: %d sequence(s) still held after the drain timeout; the coordinator "
                       "replays them elsewhere", node_id, left)
    reclaimer.cancel()
    await server.stop(grace=1)
    servicer.compute.shutdown(wait=True, cancel_futures=True)
    logger.info("shard node %s stopped", node_id)


def main() -> None:
    args = parse_args()
    setup_logging(args.log_level, "shard_node", args.log_format)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    asyncio.run(serve(args))
    exit_now()


def exit_now() -> None:
    """Exits without the interpreter's teardown, once serving stopped cleanly: every sequence was drained and the
    server closed, so nothing is left to finalize, and Python's final garbage collections plus torch's operator
    deregistration took 2-3 s of CPU (measured), delaying every stop and rolling restart by as much."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
