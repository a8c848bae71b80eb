"""MeasureLinks on a node: the least round trip of health checks to each address, an unreachable one reported with
the reason, and requests that ask for too much (or name no address) refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from protos import shard_pb2
from shard_node.link_probe import MAX_ADDRESSES, BadRequest, check_request, measure_links
from tests.conftest import free_port


def test_a_reachable_node_is_timed_and_an_unreachable_one_reported() -> None:
    async def scenario() -> list[shard_pb2.LinkTime]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await measure_links([f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"], 3)
        finally:
            await server.stop(None)

    up, down = asyncio.run(scenario())
    assert not up.error and 0 < up.rtt_seconds < 1.0
    assert down.error.startswith("UNAVAILABLE") and down.rtt_seconds == 0


@pytest.mark.parametrize(("addresses", "samples", "why"), [
    ([f"127.0.0.1:{i}" for i in range(1, MAX_ADDRESSES + 2)], 0, "at most"),
    (["127.0.0.1:1"], 11, "samples"),
    (["no-port"], 0, "host:port"),
    (["127.0.0.1:99999"], 0, "host:port"),
    (["a\nb:1"], 0, "host:port"),
])
def test_bad_requests_are_refused(addresses: list[str], samples: int, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        check_request(shard_pb2.MeasureLinksRequest(addresses=addresses, samples=samples))


def test_repeats_are_measured_once() -> None:
    addresses, samples = check_request(shard_pb2.MeasureLinksRequest(addresses=["h:1", "h:1", "g:2"]))
    assert addresses == ["h:1", "g:2"] and samples == 5
