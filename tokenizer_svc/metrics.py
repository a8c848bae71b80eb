"""Prometheus metrics of the tokenizer service, served on ``tokenizer.metrics_port``."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Histogram

REQUEST_SECONDS = Histogram("shardline_tokenizer_request_seconds", "time to answer one tokenizer call",
                            ["method", "model_name"],
                            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
Reply = TypeVar("Reply")


def timed(method: Callable[[Any, Any, Any], Awaitable[Reply]]) -> Callable[[Any, Any, Any], Awaitable[Reply]]:
    """Observes a servicer method's latency; models it does not know count as ``unknown`` (bounded labels)."""
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Any) -> Reply:
        started = time.perf_counter()
        try:
            return await method(self, request, context)
        finally:
            model = request.model if request.model in self.tokenizers.known() else "unknown"
            REQUEST_SECONDS.labels(method.__name__, model).observe(time.perf_counter() - started)
    return wrapper
