"""ASGI middleware in front of every route: the Host check (while no keys are set), API keys (user and admin),
JSON-only request bodies and the request body size limit.

All are plain ASGI (not BaseHTTPMiddleware), so streaming responses and client-disconnect
detection pass through untouched.
"""

from __future__ import annotations

import hashlib
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
# Answered whatever the Host header says: probes and scrapers (kubelet, Prometheus) send the pod's IP as Host,
# and these paths change nothing and carry no user data.
PROBE_PATHS = OPEN_PATHS | {"/ready"}
# Routes that change the cluster: every method but GET/HEAD/OPTIONS on these paths and below them (models added
# and removed, nodes registered and removed) needs an admin key once any key is configured.
ADMIN_PATHS = ("/api/models", "/api/nodes")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ALLOW_NO_KEYS_ENV = "SHARDLINE_ALLOW_NO_KEYS"


def _env_list(name: str) -> list[str]:
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


def api_keys_from(configured: Iterable[str]) -> frozenset[str]:
    """Keys from config plus SHARDLINE_API_KEYS (comma-separated)."""
    return frozenset([*configured, *_env_list("SHARDLINE_API_KEYS")])


def admin_keys_from(configured: Iterable[str]) -> frozenset[str]:
    """Admin keys from config (api.admin_keys) plus SHARDLINE_ADMIN_KEYS (comma-separated)."""
    return frozenset([*configured, *_env_list("SHARDLINE_ADMIN_KEYS")])


def allowed_hosts_from(configured: Iterable[str]) -> frozenset[str]:
    """Host names allowed besides loopback while no keys are set: api.allowed_hosts plus SHARDLINE_ALLOWED_HOSTS."""
    return frozenset(h.lower().rstrip(".") for h in [*configured, *_env_list("SHARDLINE_ALLOWED_HOSTS")])


def is_admin_route(method: str, path: str) -> bool:
    return method not in READ_METHODS and any(path == p or path.startswith(p + "/") for p in ADMIN_PATHS)


def host_name(header: str) -> str:
    """The name in a Host header, without port, brackets or a trailing dot, lower-cased: ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


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


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()  # same length for every key: compare_digest leaks nothing about lengths


class ApiKeyMiddleware:
    """Every route but /health, /metrics and the web UI's files needs ``Authorization: Bearer <key>`` when keys
    are configured. Routes that change the cluster (``is_admin_route``) need an admin key: a user key gets 403
    there, even when no admin key is configured. Admin keys work on every route."""

    def __init__(self, app: ASGIApp, keys: frozenset[str], admin_keys: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.keys = [_digest(k.encode()) for k in keys]
        self.admin_keys = [_digest(k.encode()) for k in admin_keys]

    @staticmethod
    def _token(scope: Scope) -> bytes | None:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        return token.strip()

    @staticmethod
    def _matches(token: bytes, keys: list[bytes]) -> bool:
        digest = _digest(token)
        return sum(secrets.compare_digest(digest, k) for k in keys) > 0  # no early exit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (self.keys or self.admin_keys) or path in OPEN_PATHS or is_ui_path(path):
            await self.app(scope, receive, send)
            return
        token = self._token(scope)
        admin_route = is_admin_route(scope["method"], path)
        if token is not None and self._matches(token, self.admin_keys):
            await self.app(scope, receive, send)
            return
        if token is not None and self._matches(token, self.keys):
            if not admin_route:
                await self.app(scope, receive, send)
                return
            configured = "" if self.admin_keys else " (none is configured)"
            await _send_error(send, 403, f"{scope['method']} {path} changes the cluster: it needs an admin key, one "
                              f"of SHARDLINE_ADMIN_KEYS or api.admin_keys{configured}; this key is a user key")
            return
        has_header = any(k == b"authorization" for k, _ in scope.get("headers") or [])
        keys = "SHARDLINE_ADMIN_KEYS or api.admin_keys" if admin_route else "SHARDLINE_API_KEYS or api.api_keys"
        message = ("invalid API key" if has_header else "missing API key") + \
            f": send 'Authorization: Bearer <key>' with one of the keys in {keys}"
        await _send_error(send, 401, message, {"WWW-Authenticate": "Bearer"})


class HostMiddleware:
    """While no API keys are configured: requests whose Host is not loopback or an allowed name get 421, so a web
    page cannot reach the API through DNS rebinding (its own name resolving to 127.0.0.1). A request without a
    Host header passes: browsers always send one."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    def _allowed(self, scope: Scope) -> tuple[bool, str]:
        raw = dict(scope.get("headers") or []).get(b"host")
        if raw is None:
            return True, ""
        name = host_name(raw.decode("latin-1"))
        return is_loopback(name) or name in self.allowed or "*" in self.allowed, name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path", "") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        ok, name = self._allowed(scope)
        if ok:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send_error(send, 421, (
            f"Host {name[:100]!r} is not allowed while the API runs without keys (DNS rebinding protection): use "
            "localhost or 127.0.0.1, add the name to api.allowed_hosts or SHARDLINE_ALLOWED_HOSTS (comma-separated), "
            "or configure API keys (SHARDLINE_API_KEYS)"))


class ContentTypeMiddleware:
    """POST, PUT and PATCH bodies must be declared ``Content-Type: application/json`` (parameters such as
    ``charset`` allowed), else 415: a web page can send text/plain or form bodies cross-site without a CORS
    preflight, but not application/json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if declared.partition(";")[0].strip().lower() == "application/json":
            await self.app(scope, receive, send)
            return
        got = f"got {declared[:100]!r}" if declared else "none was given"
        await _send_error(send, 415, f"request bodies must be JSON: send 'Content-Type: application/json' ({got})")


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
