"""Is the delay where it should be? TCP request/response round trips and `ping -U` across the bench's namespaces
(bench/netns.py): root namespace <-> a node, and node <-> node (through the root namespace's forwarding).

    python -m bench.netns_check tcp-echo --host H --port P [--lifetime S]   # echo server (run inside a namespace)
    python -m bench.netns_check rtt --host H --port P                       # one JSON line: {"tcp_rtt_p50_ms": ...}
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import time
from typing import Any

from bench.procs import PY, Child
from bench.stats import percentile

ECHO_PORT = 50099


def tcp_rtt_ms(host: str, port: int, n: int = 50) -> float:
    """Median request/response time of a 64-byte message over one TCP connection (TCP_NODELAY)."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(n + 5):
            t = time.perf_counter()
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                chunk = s.recv(64 - got)
                if not chunk:
                    raise ConnectionError("echo closed")
                got += len(chunk)
            times.append((time.perf_counter() - t) * 1e3)
    return percentile(times[5:], 50)


def ping_u_ms(host: str, prefix: list[str] | None = None, count: int = 10) -> float | None:
    """Average of `ping -U` (user-to-user latency, which includes the INPUT queue wait)."""
    if shutil.which("ping") is None:
        return None
    r = subprocess.run([*(prefix or []), "ping", "-U", "-q", "-c", str(count), "-i", "0.2", host],
                       capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return None


def _tcp_echo(host: str, port: int, lifetime_s: float) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4)
    srv.settimeout(lifetime_s)
    end = time.monotonic() + lifetime_s
    while time.monotonic() < end:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(max(1.0, end - time.monotonic()))
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass


def _rtt_from(prefix: list[str], host: str, port: int, deadline_s: float = 15.0) -> float:
    """tcp_rtt_ms run behind ``prefix`` (another namespace), retried until the echo listens."""
    deadline = time.monotonic() + deadline_s
    while True:
        if not prefix:
            try:
                return tcp_rtt_ms(host, port)
            except OSError:
                pass
        else:
            r = subprocess.run([*prefix, PY, "-m", "bench.netns_check", "rtt", "--host", host, "--port", str(port)],
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                return float(json.loads(r.stdout.strip().splitlines()[-1])["tcp_rtt_p50_ms"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no TCP echo answered on {host}:{port} within {deadline_s:.0f} s")
        time.sleep(0.3)


def measure_path(run_dir: Any, server_prefix: list[str], server_ip: str, client_prefix: list[str],
                 port: int = ECHO_PORT) -> dict[str, float | None]:
    """TCP RTT p50 and `ping -U` from the client's namespace (``[]``: the root one) to an echo in the server's."""
    echo = Child("tcp-echo", [*server_prefix, PY, "-m", "bench.netns_check", "tcp-echo", "--host", server_ip,
                              "--port", str(port), "--lifetime", "120"], run_dir / "tcp-echo.log")
    echo.start()
    try:
        rtt = _rtt_from(client_prefix, server_ip, port)
    finally:
        echo.stop()
    return {"tcp_rtt_p50_ms": rtt, "ping_U_avg_ms": ping_u_ms(server_ip, client_prefix)}


def measure_delays(topo: Any) -> dict[str, dict[str, float | None]]:
    """Root <-> node 1 (coordinator <-> node) and node 1 <-> node 2 (stage to stage), as the links are now."""
    return {"root-node1": measure_path(topo.run_dir, topo.prefix(1), topo.node_ip(1), []),
            "node1-node2": measure_path(topo.run_dir, topo.prefix(2), topo.node_ip(2), topo.prefix(1))}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("tcp-echo")
    e.add_argument("--host", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--lifetime", type=float, default=120)
    r = sub.add_parser("rtt")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    if args.cmd == "tcp-echo":
        _tcp_echo(args.host, args.port, args.lifetime)
    else:
        print(json.dumps({"tcp_rtt_p50_ms": tcp_rtt_ms(args.host, args.port)}))  # noqa: T201 - the answer


if __name__ == "__main__":
    main()
