"""Network variant: each shard node in its own network namespace, linked to the root namespace by a veth pair,
with a delay each way (iptables NFQUEUE on INPUT + bench/netdelay.py, since this kernel has no netem).

Addresses: namespace shlb-nI holds 10.231.I.2/24 on veth shlbIn; the root side is 10.231.I.1/24 on shlbIr.
Node to node: every namespace routes 10.231.0.0/16 via its root side, and the root namespace forwards between our
veths (ip_forward on for the run, an ACCEPT rule for shlb* -> shlb* at the top of FORWARD). A forwarded packet never
passes the root namespace's INPUT, so it waits once, on INPUT of the receiving namespace, as coordinator <-> node
packets do. These addresses exist only inside what this module creates, and ``Topology.close`` (also run on
errors, Ctrl-C and SIGTERM) removes every rule, route, namespace, veth and daemon it made and puts ip_forward back.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import PY, Child, log, stop_all

NS_PREFIX = "shlb-n"
VETH_PREFIX = "shlb"
SUBNET = "10.231.{i}.0/24"
QUEUE_NUM = 2317
APT_PACKAGES = ["iptables", "iputils-ping", "libnetfilter-queue-dev"]
NETFILTERQUEUE = "netfilterqueue==1.1.0"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
SAVED_IP_FORWARD = Path("/tmp/shardline-bench-ip_forward")  # the value before the run, until close puts it back
FORWARD_RULE = ["FORWARD", "-i", f"{VETH_PREFIX}+", "-o", f"{VETH_PREFIX}+", "-j", "ACCEPT"]


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
    run_dir: Path
    lifetime_s: float = 3600.0
    delay_ms: float = 0.0  # added each way now (0: no queue rules at all)
    forward_policy: str = ""  # the root FORWARD chain's policy found at open
    namespaces: list[str] = field(default_factory=list)
    delay_rules: list[list[str]] = field(default_factory=list)  # prefix + iptables rule, removed by stop_delay
    forward_rule: bool = False
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
            self._link(i)
        self._route_between_nodes()

    def _link(self, i: int) -> None:
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
        sh("ip", "-n", ns, "route", "add", "10.231.0.0/16", "via", self.root_ip(i))

    def _route_between_nodes(self) -> None:
        """ip_forward on in the root namespace (the old value kept) and FORWARD open between our veths."""
        self.forward_policy = next((line.split()[2] for line in sh("iptables", "-S", "FORWARD").stdout.splitlines()
                                    if line.startswith("-P FORWARD")), "?")
        if not SAVED_IP_FORWARD.exists():
            SAVED_IP_FORWARD.write_text(IP_FORWARD.read_text())
        IP_FORWARD.write_text("1\n")
        sh("iptables", "-I", *FORWARD_RULE)
        self.forward_rule = True

    def set_delay(self, delay_ms: float) -> None:
        """Every link now waits ``delay_ms`` each way (0: the queue rules and daemons removed)."""
        self.set_delays([delay_ms] * self.count)

    def set_delays(self, delays_ms: list[float]) -> None:
        """Packets arriving at node i (from the root namespace or another node) and packets from node i arriving at
        the root namespace wait ``delays_ms[i - 1]``: node i's round trip to the root is twice that, node i <-> node
        j the sum of theirs (all 0: the queue rules and daemons removed)."""
        self.stop_delay()
        if any(d > 0 for d in delays_ms):
            self.delay_ms = max(delays_ms)
            self._start_daemons(delays_ms)
            self._add_delay_rules()

    def _start_daemons(self, delays_ms: list[float]) -> None:
        def delay(queue: int, ms: float) -> list[str]:
            return ["-m", "bench.netdelay", "--queue", str(queue), "--delay-ms", str(ms), "--lifetime",
                    str(self.lifetime_s)]

        for i, ms in enumerate(delays_ms, start=1):  # the root side: one queue per node's veth
            self.daemons.append(Child(f"netdelay-root{i}", [PY, *delay(QUEUE_NUM + i, ms)],
                                      self.run_dir / f"netdelay-root{i}.log"))
            self.daemons.append(Child(f"netdelay-{self.ns(i)}", [*self.prefix(i), PY, *delay(QUEUE_NUM, ms)],
                                      self.run_dir / f"netdelay-{self.ns(i)}.log"))
        for d in self.daemons:
            d.start()
        time.sleep(1.0)
        for d in self.daemons:
            if not d.alive:
                raise NetnsUnavailable(f"delay daemon {d.name} exited: {d.log_tail(5)}")

    def _add_delay_rules(self) -> None:
        def queue(num: int) -> list[str]:
            return ["-j", "NFQUEUE", "--queue-num", str(num), "--queue-bypass"]

        for i in range(1, self.count + 1):
            # node side: packets from the root namespace or another node wait on arrival in the node's namespace
            node_rule = [*self.prefix(i), "iptables", "INPUT", "-i", f"{VETH_PREFIX}{i}n", *queue(QUEUE_NUM)]
            # root side: packets from the node to the root namespace itself (forwarded ones skip INPUT)
            root_rule = ["iptables", "INPUT", "-i", f"{VETH_PREFIX}{i}r", *queue(QUEUE_NUM + i)]
            for rule in (node_rule, root_rule):
                at = rule.index("iptables") + 1
                sh(*rule[:at], "-I", *rule[at:])
                self.delay_rules.append(rule)

    def stop_delay(self) -> None:
        for rule in self.delay_rules:
            at = rule.index("iptables") + 1
            sh(*rule[:at], "-D", *rule[at:], check=False)
        self.delay_rules.clear()
        stop_all(self.daemons, timeout_s=5)
        self.daemons.clear()
        self.delay_ms = 0.0

    def close(self) -> None:
        self.stop_delay()
        if self.forward_rule:
            sh("iptables", "-D", *FORWARD_RULE, check=False)
            self.forward_rule = False
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)  # takes its veth pair and routes with it
        self.namespaces.clear()
        for i in range(1, self.count + 1):
            sh("ip", "link", "del", f"{VETH_PREFIX}{i}r", check=False, timeout=10)
        restore_ip_forward()

    def __enter__(self) -> Topology:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore_ip_forward() -> None:
    """Puts back the root namespace's ip_forward as it was before the (possibly killed) run that saved it."""
    if SAVED_IP_FORWARD.exists():
        IP_FORWARD.write_text(SAVED_IP_FORWARD.read_text())
        SAVED_IP_FORWARD.unlink()


def cleanup_stale() -> None:
    """Removes what an earlier, killed bench may have left: our root rules, namespaces, veths, ip_forward."""
    if shutil.which("iptables"):
        for chain in ("INPUT", "FORWARD"):
            for line in sh("iptables", "-S", chain, check=False).stdout.splitlines():
                if f"-i {VETH_PREFIX}" in line and line.startswith(f"-A {chain}") and \
                        ("NFQUEUE" in line or f"-o {VETH_PREFIX}" in line):
                    sh("iptables", "-D", *line.split()[1:], check=False)
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0].strip()
        if name.startswith(NS_PREFIX):
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        dev = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if dev.startswith(VETH_PREFIX) and dev[len(VETH_PREFIX):-1].isdigit():
            sh("ip", "link", "del", dev, check=False)
    restore_ip_forward()


def describe_setup(delays_ms: list[float], node_threads: int, forward_policy: str) -> str:
    """The network variant's setup, for the report."""
    return (f"Each shard node runs in its own network namespace (shlb-n1..3, 10.231.N.2/24) linked to the root "
            f"namespace by a veth pair (root side 10.231.N.1); the coordinator and the clients stay in the root "
            f"namespace. Node to node traffic is routed through the root namespace (10.231.0.0/16 via the root "
            f"side, ip_forward on for the run, FORWARD policy {forward_policy} plus an ACCEPT rule for our veths). "
            f"Delays {', '.join(f'{d:g}' for d in delays_ms)} ms each way, one after another on the same cluster: "
            f"iptables NFQUEUE rules (`--queue-bypass`) on INPUT of the node-side veth in each namespace and of the "
            f"root-side veths in the root namespace, served by bench/netdelay.py (the kernel has no netem); a "
            f"forwarded node -> node packet skips the root's INPUT and waits once, in the receiving namespace. "
            f"0 ms = the same veths without any queue rule. Node threads: {node_threads}.")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.netns")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cleanup", help="remove what an interrupted bench left: rules, namespaces, veths, ip_forward")
    p.parse_args()
    cleanup_stale()


if __name__ == "__main__":
    main()
