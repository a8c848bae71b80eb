"""python -m shard_node --port 50051: a shard node; the coordinator tells it what to load."""

from __future__ import annotations

import argparse
import asyncio
import logging

import grpc
import torch

from protos import coordinator_pb2, coordinator_pb2_grpc, shard_pb2_grpc
from protos.runtime import (
    GRPC_OPTIONS,
    SERVING,
    add_health,
    add_log_args,
    serve_metrics,
    setup_logging,
    wait_for_stop_signal,
)
from shard_node import metrics
from shard_node.service import ShardNodeServicer

logger = logging.getLogger("shard_node")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shard_node", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--node-id", default="", help="name used in logs and Info (default: node-<port>)")
    p.add_argument("--kv-cache-tokens", type=int, default=32768,
                   help="KV budget per shard when LoadShard does not give one")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--memory-mb", type=int, default=0,
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
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0 = off)")
    add_log_args(p)
    return p.parse_args()


async def join(coordinator: str, node_id: str, address: str) -> None:
    """Registers with the coordinator, retrying until it answers (it may start after this node)."""
    delay = 1.0
    async with grpc.aio.insecure_channel(coordinator, options=GRPC_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        while True:
            try:
                reply = await stub.RegisterNode(coordinator_pb2.RegisterNodeRequest(node_id=node_id, address=address),
                                                timeout=10.0)
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
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
    server = grpc.aio.server(options=GRPC_OPTIONS)
    servicer = ShardNodeServicer(node_id, args.kv_cache_tokens, args.memory_mb * 2**20)
    shard_pb2_grpc.add_ShardNodeServicer_to_server(servicer, server)
    health = add_health(server)
    address = f"{args.host}:{args.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"shard node {node_id}: cannot listen on {address} (port in use?)")
    await server.start()
    if args.metrics_port:
        metrics.register_state(servicer.node_info)
        serve_metrics(args.metrics_port, args.host, "shard_node")
    await health.set("", SERVING)
    logger.info("shard node %s listening on %s (torch %s, %d threads); waiting for LoadShard", node_id, address,
                torch.__version__, torch.get_num_threads())
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
    await server.stop(grace=1)
    servicer.compute.shutdown(wait=True, cancel_futures=True)
    logger.info("shard node %s stopped", node_id)


def main() -> None:
    args = parse_args()
    setup_logging(args.log_level, "shard_node", args.log_format)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
