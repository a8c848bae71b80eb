"""Server-sent events and client-disconnect handling.

A streaming response stops when its client disconnects (Starlette cancels the body iterator, whose
``finally`` cancels the generation). ``until_disconnected`` gives the same to a non-streaming route:
the work is cancelled as soon as the client goes away, so nothing keeps generating for nobody.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.errors import ApiError

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: Any, event: str | None = None) -> str:
    """One SSE message; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


class EventStreamResponse(StreamingResponse):
    """A streamed text/event-stream answer (as a route's response_class, it documents that media type)."""

    media_type = "text/event-stream"


def event_stream(events: AsyncIterator[str]) -> EventStreamResponse:
    return EventStreamResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Runs ``work``; if the client disconnects first, cancels it and raises ApiError(499)."""
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, ApiError):
        pass
    raise ApiError(499, "the client closed the connection; generation was cancelled")
