"""uvicorn's HTTP/1.1 protocol (httptools) with bounds on the request head, before any ASGI code runs.

- a request target longer than ``api.max_url_bytes`` gets 414, headers larger than ``api.max_header_bytes`` 431
  (uvicorn and llhttp buffer both without limit);
- a connection whose request head is not complete within ``api.header_timeout_s`` of its first byte (or of the
  connection, for the first request) gets 408 and is closed (slowloris; uvicorn's keep-alive timeout runs only
  between requests);
- ``api.max_connections`` goes to uvicorn's ``limit_concurrency`` (503 beyond it).

So an unauthenticated client holds at most one bounded head per connection, for a bounded time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from api.errors import error_body
from protos.config import ApiConfig


@dataclass(frozen=True)
class HeadLimits:
    max_url_bytes: int
    max_header_bytes: int
    header_timeout_s: float

    @classmethod
    def of(cls, api: ApiConfig) -> HeadLimits:
        return cls(api.max_url_bytes, api.max_header_bytes, api.header_timeout_s)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the answer is in ``LimitedHttpToolsProtocol._refusal``."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits = HeadLimits.of(ApiConfig())  # the defaults; protocol_class() gives the configured ones

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._in_head = True  # until the first request's headers are complete
        self._head_bytes = 0  # bytes received for the current request head
        self._header_bytes = 0  # bytes of its complete headers
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head_before = self._in_head
        super().data_received(data)
        if self._refusal is None and in_head_before and self._in_head and not self.transport.is_closing():
            # still inside one head: every byte of this chunk belongs to it (a single header that never ends
            # reaches no callback until it does)
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_url_bytes + self.limits.max_header_bytes:
                self._refusal = (431, f"the request head is over {self.limits.max_header_bytes} bytes "
                                      "(api.max_header_bytes)")
                self._send_refusal()

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._header_bytes = True, 0, 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_url_bytes:
            self._refuse(414, f"the request target (path and query) is over {self.limits.max_url_bytes} bytes "
                              "(api.max_url_bytes)")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request headers are over {self.limits.max_header_bytes} bytes "
                              "(api.max_header_bytes)")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    # refusals
    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)  # httptools stops and raises HttpParserCallbackError: send_400_response below

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._send_refusal()

    def _send_refusal(self) -> None:
        status, message = self._refusal or (400, "invalid HTTP request")
        self.logger.warning("refused a request head: %s", message)
        body = json.dumps(error_body(status, message)).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n", b"\r\n"]
        self._cancel_head_timer()
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    # the head timeout
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        self._refusal = (408, f"the request head was not complete within {self.limits.header_timeout_s:g} s "
                              "(api.header_timeout_s)")
        self._send_refusal()


def protocol_class(api: ApiConfig) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)``, with ``api``'s limits."""
    return type("ShardlineHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": HeadLimits.of(api)})
