"""Network variant: each shard node in its own network namespace, linked to the root namespace by a veth pair,
with a delay each way (iptables NFQUEUE on INPUT + bench/netdelay.py, since this kernel has no netem).

Addresses: namespace shlb-nI holds 10.231.I.2/24 on veth shlbIn; the root side is 10.231.I.1/24 on shlbIr.
These addresses exist only inside what this module creates, and ``Topology.close`` (also run on errors,
Ctrl-C and SIGTERM) removes every rule, namespace, veth and daemon it made.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import PY, Child, log, stop_all
from bench.stats import percentile

NS_PREFIX = "shlb-n"
VETH_PREFIX = "shlb"
SUBNET = "10.231.{i}.0/24"
QUEUE_NUM = 2317
APT_PACKAGES = ["iptables", "iputils-ping", "libnetfilter-queue-dev"]
NETFILTERQUEUE = "netfilterqueue==1.1.0"


class NetnsUnavailable(RuntimeError):
    """Namespaces or the delay cannot be set up here; the message says why."""


def sh(*argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(argv)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r


def ensure_prerequisites() -> list[str]:
    """Root, ip, iptables, ping, libnetfilter-queue and the netfilterqueue package; installs what is missing.

    Returns what it installed; raises NetnsUnavailable with the reason when something cannot be had.
    """
    if os.geteuid() != 0:
        raise NetnsUnavailable("not root: network namespaces and iptables need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is missing")
    installed: list[str] = []
    missing = [p for p in APT_PACKAGES if sh("dpkg-query", "-W", "-f=${Status}", p, check=False).stdout.find(
        "install ok installed") < 0]
    if missing:
        log(f"  apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise NetnsUnavailable(f"apt-get update failed: {r.stderr.strip()[-300:]}")
        r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], capture_output=True,
                           text=True, env=env, timeout=900)
        if r.returncode != 0:
            raise NetnsUnavailable(f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()[-300:]}")
        installed += missing
    if importlib.util.find_spec("netfilterqueue") is None:
        log(f"  pip install {NETFILTERQUEUE}")
        r = subprocess.run([PY, "-m", "pip", "install", "--quiet", NETFILTERQUEUE], capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0:
            raise NetnsUnavailable(f"pip install {NETFILTERQUEUE} failed: {(r.stderr or r.stdout).strip()[-300:]}")
        installed.append(NETFILTERQUEUE)
    return installed


@dataclass
class Topology:
    count: int
    delay_ms: float
    run_dir: Path
    lifetime_s: float = 3600.0
    namespaces: list[str] = field(default_factory=list)
    root_rules: list[list[str]] = field(default_factory=list)
    daemons: list[Child] = field(default_factory=list)

    @staticmethod
    def ns(i: int) -> str:
        return f"{NS_PREFIX}{i}"

    @staticmethod
    def node_ip(i: int) -> str:
        return f"10.231.{i}.2"

    @staticmethod
    def root_ip(i: int) -> str:
        return f"10.231.{i}.1"

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def open(self) -> None:
        cleanup_stale()
        routes = sh("ip", "-4", "route", "show").stdout
        if "10.231." in routes:
            raise NetnsUnavailable(f"the root namespace already routes 10.231.x.x; refusing to touch it:\n{routes}")
        try:
            sh("ip", "netns", "add", self.ns(1))
        except NetnsUnavailable as e:
            raise NetnsUnavailable(f"cannot create a network namespace: {e}") from None
        self.namespaces.append(self.ns(1))
        for i in range(1, self.count + 1):
            ns, vr, vn = self.ns(i), f"{VETH_PREFIX}{i}r", f"{VETH_PREFIX}{i}n"
            if i > 1:
                sh("ip", "netns", "add", ns)
                self.namespaces.append(ns)
            sh("ip", "link", "add", vr, "type", "veth", "peer", "name", vn)
            sh("ip", "link", "set", vn, "netns", ns)
            sh("ip", "addr", "add", f"{self.root_ip(i)}/24", "dev", vr)
            sh("ip", "link", "set", vr, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", vn)
            sh("ip", "-n", ns, "link", "set", vn, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def start_delay(self) -> None:
        """Delay daemons (root + one per namespace), then the NFQUEUE rules on our veths' INPUT."""
        delay = ["-m", "bench.netdelay", "--queue", str(QUEUE_NUM), "--delay-ms", str(self.delay_ms),
                 "--lifetime", str(self.lifetime_s)]
        self.daemons.append(Child("netdelay-root", [PY, *delay], self.run_dir / "netdelay-root.log"))
        for i in range(1, self.count + 1):
            self.daemons.append(Child(f"netdelay-{self.ns(i)}", [*self.prefix(i), PY, *delay],
                                      self.run_dir / f"netdelay-{self.ns(i)}.log"))
        for d in self.daemons:
            d.start()
        time.sleep(1.0)
        for d in self.daemons:
            if not d.alive:
                raise NetnsUnavailable(f"delay daemon {d.name} exited: {d.log_tail(5)}")
        queue = ["-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM), "--queue-bypass"]
        for i in range(1, self.count + 1):
            # node side: packets from the coordinator wait on arrival in the node's namespace
            sh(*self.prefix(i), "iptables", "-A", "INPUT", "-i", f"{VETH_PREFIX}{i}n", *queue)
            # root side: packets from the node wait on arrival in the root namespace (only on our veths)
            rule = ["INPUT", "-i", f"{VETH_PREFIX}{i}r", *queue]
            sh("iptables", "-I", *rule)
            self.root_rules.append(rule)

    def close(self) -> None:
        for rule in self.root_rules:
            sh("iptables", "-D", *rule, check=False)
        self.root_rules.clear()
        stop_all(self.daemons, timeout_s=5)
        self.daemons.clear()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # takes its veth pair with it
        self.namespaces.clear()
        for i in range(1, self.count + 1):
            sh("ip", "link", "del", f"{VETH_PREFIX}{i}r", check=False, timeout=10)

    def __enter__(self) -> Topology:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cleanup_stale() -> None:
    """Removes what an earlier, killed bench may have left: our root rules, namespaces and veths."""
    if shutil.which("iptables"):
        rules = sh("iptables", "-S", "INPUT", check=False).stdout.splitlines()
        for line in rules:
            if f"-i {VETH_PREFIX}" in line and "NFQUEUE" in line and line.startswith("-A INPUT"):
                sh("iptables", "-D", *line.split()[1:], check=False)
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0].strip()
        if name.startswith(NS_PREFIX):
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if dev.startswith(VETH_PREFIX) and dev[len(VETH_PREFIX):-1].isdigit():
            sh("ip", "link", "del", dev, check=False)


# --------------------------------------------------------------------------------------- delay check


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


def ping_u_ms(host: str, count: int = 10) -> float | None:
    """Average of `ping -U` (user-to-user latency, which includes the INPUT queue wait)."""
    if shutil.which("ping") is None:
        return None
    r = sh("ping", "-U", "-q", "-c", str(count), "-i", "0.2", host, check=False, timeout=30)
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


def measure_delay(topo: Topology, i: int = 1, port: int = 50099) -> dict[str, float | None]:
    echo = Child("tcp-echo", [*topo.prefix(i), PY, "-m", "bench.netns", "tcp-echo", "--host", topo.node_ip(i),
                              "--port", str(port), "--lifetime", "120"], topo.run_dir / "tcp-echo.log")
    echo.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                rtt = tcp_rtt_ms(topo.node_ip(i), port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    finally:
        echo.stop()
    return {"tcp_rtt_p50_ms": rtt, "ping_U_avg_ms": ping_u_ms(topo.node_ip(i))}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("tcp-echo")
    e.add_argument("--host", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--lifetime", type=float, default=120)
    sub.add_parser("cleanup")
    args = p.parse_args()
    if args.cmd == "tcp-echo":
        _tcp_echo(args.host, args.port, args.lifetime)
    else:
        cleanup_stale()


if __name__ == "__main__":
    sys.exit(main())


def describe_setup(delay_ms: float, node_threads: int) -> str:
    """The network variant's setup, for the report."""
    return (f"Each shard node runs in its own network namespace (shlb-n1..3, 10.231.N.2/24) linked to the root "
            f"namespace by a veth pair (root side 10.231.N.1); the coordinator and the clients stay in the root "
            f"namespace. {delay_ms:g} ms is added each way by iptables NFQUEUE rules (`--queue-bypass`) on INPUT of "
            f"the node-side veth in each namespace and of the root-side veths in the root namespace, served by "
            f"bench/netdelay.py (the kernel has no netem). Node threads: {node_threads}.")
