"""The round trips from this node to other nodes (MeasureLinks): what a hidden state handed stage to stage costs on
each link. Each address gets a few gRPC health checks over a channel like the one forwarding uses (TLS and the
cluster token where configured); the least round trip counts (a check delayed by other work on either side says
nothing about the wire). Addresses are measured one after another, each within a deadline, so the call is bounded."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import security, shard_pb2
from protos.names import text_problem
from protos.runtime import GRPC_OPTIONS

MAX_ADDRESSES = 32
MAX_SAMPLES = 10
DEFAULT_SAMPLES = 5
CHECK_TIMEOUT_S = 2.0  # one health check; an address that misses it is reported, not retried


class BadRequest(ValueError):
    """The request asks for too much or names something that is not an address."""


def check_request(request: shard_pb2.MeasureLinksRequest) -> tuple[list[str], int]:
    """The addresses (without repeats) and samples per address; BadRequest saying what is allowed."""
    if len(request.addresses) > MAX_ADDRESSES:
        raise BadRequest(f"{len(request.addresses)} addresses; at most {MAX_ADDRESSES}")
    if not 0 <= request.samples <= MAX_SAMPLES:
        raise BadRequest(f"samples must be 1-{MAX_SAMPLES} (0: {DEFAULT_SAMPLES}), got {request.samples}")
    for address in request.addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(address) > 300 or text_problem(address):
            raise BadRequest(f"not a host:port address: {address[:100]!r}")
    return list(dict.fromkeys(request.addresses)), request.samples or DEFAULT_SAMPLES


async def measure_links(addresses: list[str], samples: int) -> list[shard_pb2.LinkTime]:
    out = []
    for address in addresses:
        try:
            rtt = await _least_round_trip(address, samples)
            out.append(shard_pb2.LinkTime(address=address, rtt_seconds=rtt))
        except (grpc.aio.AioRpcError, security.TokenInClear, ValueError) as e:
            why = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e)
            out.append(shard_pb2.LinkTime(address=address, error=why))
    return out


async def _least_round_trip(address: str, samples: int) -> float:
    async with security.aio_channel(address, GRPC_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT_S)  # connects; not counted
        best = float("inf")
        for _ in range(samples):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=CHECK_TIMEOUT_S)
            best = min(best, time.perf_counter() - started)
        return best
