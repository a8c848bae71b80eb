"""Hosts made of network namespaces: each on its own address, all on one switch, with a delay on every link.

A switch namespace holds a bridge; every host namespace is wired to it by a veth pair, and so is the root
namespace (the test's client, at ``CLIENT_IP``). Each host gets ``/etc/netns/<ns>/hosts``, which ``ip netns exec``
mounts over /etc/hosts, so service names (``node1``, ``coordinator``...) resolve to host addresses the way
container names do under compose. Latency: packets arriving at a host wait ``delay_ms`` in an NFQUEUE delay
daemon (``bench.netdelay``; this kernel has no netem). Every host also counts TCP connections opened over its own
loopback, so a test can prove that no component reached another through 127.0.0.1.

Only the subnet 10.233.0.0/24 and names starting with ``shlmh`` are used; ``close`` removes all of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.netns import NetnsUnavailable, ensure_prerequisites, sh
from bench.procs import PY, Child, stop_all

PREFIX = "shlmh"
SUBNET = "10.233.0"
CLIENT_IP = f"{SUBNET}.1"
QUEUE_NUM = 2318
NETNS_ETC = Path("/etc/netns")


def namespaces_permitted() -> str | None:
    """None when this process may create network namespaces and iptables rules; else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces and iptables need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"{PREFIX}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Hosts:
    names: list[str]
    run_dir: Path
    delay_ms: float = 5.0
    lifetime_s: float = 1800.0
    created: list[str] = field(default_factory=list)
    daemons: list[Child] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{PREFIX}-sw"

    def ns(self, name: str) -> str:
        return f"{PREFIX}-{name}"

    def ip(self, name: str) -> str:
        return f"{SUBNET}.{11 + self.names.index(name)}"

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]

    def open(self) -> None:
        cleanup_stale()
        ensure_prerequisites()
        if f"{SUBNET}." in sh("ip", "-4", "route", "show").stdout:
            raise NetnsUnavailable(f"the root namespace already routes {SUBNET}.x; refusing to touch it")
        sh("ip", "netns", "add", self.switch)
        self.created.append(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        # the root namespace: the test's client
        sh("ip", "link", "add", f"{PREFIX}c", "type", "veth", "peer", "name", f"{PREFIX}cs")
        self._plug(f"{PREFIX}cs")
        sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", f"{PREFIX}c")
        sh("ip", "link", "set", f"{PREFIX}c", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{self.ip(n)} {n}\n" for n in self.names)
        for i, name in enumerate(self.names):
            ns, host_if, sw_if = self.ns(name), f"{PREFIX}{i}h", f"{PREFIX}{i}s"
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", sw_if)
            sh("ip", "link", "set", host_if, "netns", ns)
            self._plug(sw_if)
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(name)}/24", "dev", host_if)
            sh("ip", "-n", ns, "link", "set", host_if, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            # counts every TCP connection opened over this host's own loopback (a rule without a target)
            sh(*self.exec_prefix(name), "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--syn")
        self._start_delay()

    def _plug(self, sw_if: str) -> None:
        sh("ip", "link", "set", sw_if, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", sw_if, "master", "br0")
        sh("ip", "-n", self.switch, "link", "set", sw_if, "up")

    def _start_delay(self) -> None:
        argv = [PY, "-m", "bench.netdelay", "--queue", str(QUEUE_NUM), "--delay-ms", str(self.delay_ms),
                "--lifetime", str(self.lifetime_s)]
        for name in self.names:
            d = Child(f"netdelay-{name}", [*self.exec_prefix(name), *argv], self.run_dir / f"netdelay-{name}.log")
            d.start()
            self.daemons.append(d)
        time.sleep(1.0)
        for d in self.daemons:
            if not d.alive:
                raise NetnsUnavailable(f"delay daemon {d.name} exited: {d.log_tail(5)}")
        for i, name in enumerate(self.names):
            sh(*self.exec_prefix(name), "iptables", "-A", "INPUT", "-i", f"{PREFIX}{i}h", "-j", "NFQUEUE",
               "--queue-num", str(QUEUE_NUM), "--queue-bypass")

    def loopback_connections(self, name: str) -> int:
        """TCP connections this host opened to its own loopback so far."""
        out = sh(*self.exec_prefix(name), "iptables", "-nvxL", "OUTPUT").stdout
        for line in out.splitlines():
            cols = line.split()  # the rule has no target column
            if "lo" in cols and "flags:0x17/0x02" in cols:
                return int(cols[0])
        raise AssertionError(f"no loopback counter in {self.ns(name)}:\n{out}")

    def established(self, name: str) -> list[tuple[str, str]]:
        """(local, peer) IPv4 addresses of this host's established TCP connections (IPv4-mapped IPv6 unwrapped)."""
        out = sh(*self.exec_prefix(name), "ss", "-Htn", "state", "established").stdout
        pairs = []
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                pairs.append((_ipv4(cols[-2]), _ipv4(cols[-1])))
        return pairs

    def close(self) -> None:
        stop_all(self.daemons, timeout_s=5)
        self.daemons.clear()
        for ns in self.created:
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self.created.clear()
        sh("ip", "link", "del", f"{PREFIX}c", check=False)

    def __enter__(self) -> Hosts:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ipv4(endpoint: str) -> str:
    """'[::ffff:10.233.0.12]:50051' -> '10.233.0.12' (ss prints a dual-stack socket's IPv4 peers that way)."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    return host.removeprefix("::ffff:")


def cleanup_stale() -> None:
    """Removes what an earlier, killed run may have left: our namespaces, their /etc/netns files, the root veth."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split(" ")[0].strip()
        if name.startswith(f"{PREFIX}-"):
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
    sh("ip", "link", "del", f"{PREFIX}c", check=False)
