"""Process plumbing every service shares: logging, gRPC channel/server options, health, graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # limits.grpc_max_message_mb sets it per process (set_max_message_mb)
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def set_max_message_mb(mb: int) -> None:
    """The largest gRPC message this process sends or accepts, for every channel and server made after this.
    GRPC_OPTIONS is edited in place: every module shares that one list."""
    size = mb * 1024 * 1024
    for i, (key, _) in enumerate(GRPC_OPTIONS):
        if key in ("grpc.max_send_message_length", "grpc.max_receive_message_length"):
            GRPC_OPTIONS[i] = (key, size)


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


def serve_metrics(port: int, host: str, service: str) -> None:
    """Prometheus /metrics of this process on its own HTTP port (a thread of prometheus_client)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host)
    logging.getLogger(service).info("metrics on http://%s:%d/metrics", host, port)


LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message (and the exception, if any)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname, "service": self.service, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def add_log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                        help="text for people, json (one object per line) for log collectors")


def setup_logging(level: str = "INFO", service: str = "", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)-7s {service + ' ' if service else ''}%(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


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
