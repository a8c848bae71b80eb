"""Client keepalive agrees with the servers' ping policy: an idle link is never closed with GOAWAY too_many_pings.

A real gRPC server (options from protos.runtime.server_options) and a real channel with the clients' keepalive
options, scaled down to a 200 ms period so a few dozen periods pass in seconds. gRPC's default server policy (one
ping per 5 minutes without data) would answer with GOAWAY after three pings, and the channel would leave READY.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.runtime import GRPC_OPTIONS, keepalive_options, server_options

PERIOD_MS = 200
IDLE_S = 8.0  # 40 periods; without the policy the GOAWAY comes after about 3 s


def test_every_server_uses_the_ping_policy() -> None:
    options = dict(server_options())
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= dict(GRPC_OPTIONS)["grpc.keepalive_time_ms"]
    assert options["grpc.keepalive_permit_without_calls"] == 1  # clients ping without calls too


async def _idle_link_stays_ready() -> tuple[bool, str]:
    client = [("grpc.max_receive_message_length", 1 << 20), *keepalive_options(PERIOD_MS, 5_000)]
    server = grpc.aio.server(options=server_options(client, client_time_ms=PERIOD_MS))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=client) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            try:  # any change of state means the connection was closed (a GOAWAY makes it IDLE)
                await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), IDLE_S)
                stayed = False
            except TimeoutError:
                stayed = True
            state = channel.get_state().name
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            return stayed, state
    finally:
        await server.stop(0)


def test_idle_link_is_not_closed_for_too_many_pings() -> None:
    stayed, state = asyncio.run(_idle_link_stays_ready())
    assert stayed, f"the idle channel left READY ({state}): the server closed it (GOAWAY too_many_pings)"
