"""A channel made with GRPC_OPTIONS reaches a peer soon after it comes back, however long it was down: gRPC's own
backoff (1 s growing 1.6x to 120 s) left a restarted node unreached for ten seconds and more after a few failures."""

from __future__ import annotations

import socket
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from protos.runtime import GRPC_OPTIONS

FAILURES = 6  # connection attempts turned away before the peer starts; gRPC's default backoff is then 10-17 s
PATIENCE_S = 8.0  # far above our 0.5 s backoff cap, below the default's next wait after FAILURES attempts


def turn_away(listener: socket.socket, count: int, done: threading.Event) -> None:
    """Accepts and at once closes ``count`` connections (a peer that is not serving yet)."""
    for _ in range(count):
        conn, _ = listener.accept()
        conn.close()
    done.set()


def test_a_peer_that_comes_back_is_reached_within_the_backoff_cap() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    turned_away, ready = threading.Event(), threading.Event()
    threading.Thread(target=turn_away, args=(listener, FAILURES, turned_away), daemon=True).start()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            ready.set()

    channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    channel.subscribe(on_state, try_to_connect=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        assert turned_away.wait(60), "the channel stopped trying to connect"
        listener.close()
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        assert server.add_insecure_port(address)
        server.start()
        assert ready.wait(PATIENCE_S), f"the channel did not reconnect within {PATIENCE_S} s of the peer's start"
    finally:
        channel.unsubscribe(on_state)
        channel.close()
        server.stop(None)
        listener.close()
