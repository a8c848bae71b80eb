"""ASGI middleware in front of every route: the request body size limit and API keys.

Both are plain ASGI (not BaseHTTPMiddleware), so streaming responses and client-disconnect
detection pass through untouched.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.routes.ui import is_ui_path

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics"})  # answered without a key: probes and scrapers need no secret


def api_keys_from(configured: Iterable[str]) -> frozenset[str]:
    """Keys from config plus SHARDLINE_API_KEYS (comma-separated)."""
    env = os.environ.get("SHARDLINE_API_KEYS", "")
    return frozenset([*configured, *(k.strip() for k in env.split(",") if k.strip())])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or 0.0.0.0 / :: are handled above as addresses)


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route but /health, /metrics and the web UI's files needs ``Authorization: Bearer <key>`` when keys
    are configured."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        token = token.strip()
        return any(secrets.compare_digest(token, k) for k in self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.keys or path in OPEN_PATHS or is_ui_path(path) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        has_header = any(k == b"authorization" for k, _ in scope.get("headers") or [])
        message = ("invalid API key" if has_header else "missing API key") + \
            ": send 'Authorization: Bearer <key>' with one of the keys in SHARDLINE_API_KEYS or api.api_keys"
        await _send_error(send, 401, message, {"WWW-Authenticate": "Bearer"})


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not Content-Length is given."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, size: int | str) -> str:
        return (f"request body is {size} bytes; the limit is {self.limit} bytes (api.max_body_bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, 413, self._too_large(int(declared)))
            return
        # Read the body here (at most limit + one chunk), then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_error(send, 413, self._too_large(f"more than {self.limit}"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: waits for http.disconnect

        await self.app(scope, replay, send)
