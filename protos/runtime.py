"""Process plumbing every service shares: logging, gRPC channel/server options, health, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ActivityTracker(grpc.aio.ServerInterceptor):
    """Remembers when the server last received a call, so a graceful stop can wait until it is idle."""

    def __init__(self) -> None:
        self.last_call = time.monotonic()

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.last_call = time.monotonic()
        return await continuation(handler_call_details)

    async def wait_idle(self, idle_s: float, limit_s: float) -> None:
        """Returns once no call came for ``idle_s`` seconds, or after ``limit_s`` at most."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() - self.last_call < idle_s and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


def setup_logging(level: str = "INFO", service: str = "") -> None:
    fmt = f"%(asctime)s %(levelname)-7s {service + ' ' if service else ''}%(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
