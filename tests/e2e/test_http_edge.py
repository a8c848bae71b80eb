"""The API's HTTP server below ASGI (no cluster): the real uvicorn server with the settings `python -m api` uses,
in a thread on a free port, spoken to over raw sockets. Oversized URLs and headers are refused (414/431), a
request head that never completes is closed (408), and a long legal body is not mistaken for a head."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from api.__main__ import server_options
from api.main import create_app
from protos.config import parse_config
from tests.conftest import free_port

HEADER_TIMEOUT_S = 1.0


@contextmanager
def running_server(cache: Path, **api: object) -> Iterator[tuple[str, int]]:
    config = parse_config({"model_name": "m", "models": [{"name": "m"}],
                           "nodes": [{"id": "n1", "address": "127.0.0.1:1"}], "model_cache_dir": str(cache),
                           "api": api})
    app = create_app(config)
    app.state.backend = None  # no lifespan, no cluster: the routes used here answer before they need one
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                       **server_options(config)))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        uv.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with running_server(tmp_path_factory.mktemp("cache"), max_url_bytes=2048, max_header_bytes=16384,
                        header_timeout_s=HEADER_TIMEOUT_S, max_body_bytes=4_000_000) as address:
        yield address


def read_until_closed(sock: socket.socket, deadline_s: float = 60) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does within deadline_s)."""
    sock.settimeout(1.0)
    data = b""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"the server kept the connection open for {deadline_s} s; it sent {data[:200]!r}")


def send_all_tolerant(sock: socket.socket, data: bytes) -> None:
    """Sends what the server takes; it may close the connection (after answering) before all of it is sent."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_headers_too_large_get_431(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        send_all_tolerant(s, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"api.max_header_bytes" in answer


def test_many_small_headers_too_large_get_431(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        send_all_tolerant(s, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" +
                          b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(1000)) + b"\r\n")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def test_a_header_that_never_ends_is_refused_before_it_grows(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-A: ")
        for _ in range(40):  # 40 x 4 KiB, never a line end: llhttp holds it, no callback sees it
            send_all_tolerant(s, b"a" * 4096)
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def test_url_too_long_gets_414(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        send_all_tolerant(s, b"GET /health?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:300]
    assert b"api.max_url_bytes" in answer


def test_a_head_that_never_completes_is_closed(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow:")  # and nothing more, ever
        answer = read_until_closed(s, deadline_s=HEADER_TIMEOUT_S + 60)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    with socket.create_connection(server) as s:  # a connection that sends nothing at all is closed too
        assert read_until_closed(s, deadline_s=HEADER_TIMEOUT_S + 60).startswith(b"HTTP/1.1 408 ")


def test_normal_requests_and_large_bodies_pass(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 200 ")
    # a 3 MB body sent in one write with its head: the body is not counted as head (the route answers 422 for
    # a text over its 1,000,000 characters, not 431)
    body = b'{"text": "' + b"x" * 3_000_000 + b'"}'
    with socket.create_connection(server) as s:
        send_all_tolerant(s, b"POST /api/tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:300]
    # keep-alive: a second request on the same connection gets its own head timer and limits
    with socket.create_connection(server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.1)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(s)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:500]


def get_health(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return read_until_closed(s)


def test_connections_beyond_the_limit_get_503(tmp_path: Path) -> None:
    with running_server(tmp_path, max_connections=4) as address:
        idle = [socket.create_connection(address) for _ in range(4)]
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # heads in progress: each holds a connection
        deadline = time.monotonic() + 60
        while not (answer := get_health(address)).startswith(b"HTTP/1.1 503 "):  # once the server saw all 4
            assert time.monotonic() < deadline, answer[:300]
            time.sleep(0.1)
        for s in idle:
            s.close()
        while not (answer := get_health(address)).startswith(b"HTTP/1.1 200 "):  # once it saw them close
            assert time.monotonic() < deadline, answer[:300]
            time.sleep(0.1)
