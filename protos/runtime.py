"""Process plumbing every service shares: logging, gRPC channel/server options, health, graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.config import LimitsConfig

MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # limits.grpc_max_message_mb sets it per process (set_max_message_mb)
KEEPALIVE_TIME_MS = 30_000  # every channel (and server) pings an idle connection this often
KEEPALIVE_TIMEOUT_MS = 10_000  # a ping unanswered this long closes the connection (a dead peer is noticed)
# A channel to a peer that is down tries again after 100 ms, backing off to twice a second at most. gRPC's default
# (1 s growing 1.6x to 120 s) left a restarted node or coordinator unreached for tens of seconds after it was back.
RECONNECT_BACKOFF_MS = (100, 500)


def keepalive_options(time_ms: int = KEEPALIVE_TIME_MS, timeout_ms: int = KEEPALIVE_TIMEOUT_MS
                      ) -> list[tuple[str, int]]:
    """Pings on idle connections, with or without calls in flight, without a cap on pings between data."""
    return [("grpc.keepalive_time_ms", time_ms), ("grpc.keepalive_timeout_ms", timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


def ping_policy_options(client_time_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    """What a server accepts from clients of keepalive_options(client_time_ms): pings without calls (that is
    keepalive_permit_without_calls, already in the server's own keepalive options) as often as every half period.
    gRPC's default (one ping per 5 minutes without data, 2 strikes) answers 30 s pings with GOAWAY too_many_pings."""
    return [("grpc.http2.min_ping_interval_without_data_ms", client_time_ms // 2),
            ("grpc.http2.max_ping_strikes", 2)]


def reconnect_options(initial_ms: int = RECONNECT_BACKOFF_MS[0], max_ms: int = RECONNECT_BACKOFF_MS[1]
                      ) -> list[tuple[str, int]]:
    """How soon a channel whose peer is unreachable connects again: after ``initial_ms``, growing to ``max_ms``."""
    return [("grpc.initial_reconnect_backoff_ms", initial_ms), ("grpc.max_reconnect_backoff_ms", max_ms)]


GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    *keepalive_options(),
    *reconnect_options(),
]


def server_options(base: list[tuple[str, int]] | None = None, client_time_ms: int = KEEPALIVE_TIME_MS
                   ) -> list[tuple[str, int]]:
    """Options of every gRPC server: ``base`` (default GRPC_OPTIONS, read now, so set_max_message_mb applies)
    plus a ping policy that permits exactly what the clients' keepalive does."""
    return [*(GRPC_OPTIONS if base is None else base), *ping_policy_options(client_time_ms)]


def set_max_message_mb(mb: int) -> None:
    """The largest gRPC message this process sends or accepts, for every channel and server made after this.
    GRPC_OPTIONS is edited in place: every module shares that one list."""
    set_max_message_bytes(mb * 1024 * 1024)


def set_max_message_bytes(size: int) -> None:
    """As set_max_message_mb, in bytes."""
    GRPC_OPTIONS[:] = with_max_message_bytes(size)


def with_max_message_bytes(size: int, base: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """``base`` (default GRPC_OPTIONS) with another cap on the messages sent and accepted."""
    return [(key, size) if key in ("grpc.max_send_message_length", "grpc.max_receive_message_length") else (key, v)
            for key, v in (GRPC_OPTIONS if base is None else base)]


def client_message_bytes(max_body_bytes: int, limits: LimitsConfig) -> int:
    """Message cap of the links that carry one client request (API <-> tokenizer, API <-> coordinator): a prompt's
    text (4 UTF-8 bytes a character at most), a request body turned into protobuf (never larger than its JSON), or
    the ids and text of one prompt plus completion (64 bytes a token is generous), plus 1 MiB of headroom; never more
    than limits.grpc_max_message_mb. Node traffic (activations, KV) keeps grpc_max_message_mb."""
    need = max(4 * limits.max_prompt_chars, 4 * max_body_bytes, 64 * (limits.max_prompt_tokens + limits.max_new_tokens))
    return min(need + 1024 * 1024, limits.grpc_max_message_mb * 1024 * 1024)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ActivityTracker(grpc.aio.ServerInterceptor):
    """Remembers when the server last received a call, so a graceful stop can wait until it is idle."""

    def __init__(self) -> None:
        self.last_call = time.monotonic()

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
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
