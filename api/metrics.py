"""Prometheus metrics of the API, served at /metrics on its HTTP port (no API key needed, like /health).

Requests are counted by route template (never the raw path, so label values stay bounded), method and status.
The event loop's lag (how late a timer fires: time other work held the loop) is sampled every LAG_INTERVAL_S
from the first request on.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("shardline_api_requests", "HTTP requests answered", ["route", "method", "status"])
SECONDS = Histogram("shardline_api_request_duration_seconds", "time to the end of the response (streams included)",
                    ["route", "method"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320))


LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LOOP_LAG = Histogram("shardline_api_event_loop_lag_seconds", "how late the API's event loop ran a timer: the time "
                     "one step of other work held it", buckets=LAG_BUCKETS)
LOOP_BUSY = Histogram("shardline_api_event_loop_busy_lag_seconds", "the part of a lag sample the loop's own thread "
                      "spent computing (at most its CPU time meanwhile); the rest is time the OS ran other processes",
                      buckets=LAG_BUCKETS)
LAG_INTERVAL_S = 0.05


async def sample_loop_lag(interval_s: float = LAG_INTERVAL_S) -> None:
    """Observes LOOP_LAG forever: a sleep of interval_s that wakes late was held up by other work on the loop (or
    by other processes on a busy machine: LOOP_BUSY bounds the loop's own share by its thread's CPU time)."""
    while True:
        started, cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, time.perf_counter() - started - interval_s)
        LOOP_LAG.observe(lag)
        LOOP_BUSY.observe(min(lag, time.thread_time() - cpu))


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lag_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._lag_task is None or self._lag_task.done():  # started on the loop that serves (once)
            self._lag_task = asyncio.get_running_loop().create_task(sample_loop_lag())
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(path, scope["method"], str(status)).inc()
            SECONDS.labels(path, scope["method"]).observe(time.perf_counter() - started)
