"""The latency table (the network variant of `python -m bench`): 3 shard nodes, each in its own network namespace
(bench/netns.py), one cluster serving the float32 model twice (star relay and direct forwarding,
bench/relay_cluster.py), measured on every link delay in turn (0 ms = the veths without any queue rule).

Per delay and relay: the short prompt as one stream (``requests`` in turn: steps/s and tokens/s), then ``c``
streams at once for every aggregate level, then the long prompt as one stream (its TTFT; few new tokens since only
the first one counts). Before each delay's runs: TCP round trips root <-> node and node <-> node (the delay must
hit node -> node packets once per direction too), and at the first non-zero delay one pipeline hop (bench/hop.py).
Everything goes into ``rep.netns``; bench/latency_report.py makes the table and checks the targets.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.netns import NetnsUnavailable, Topology, describe_setup, ensure_prerequisites
from bench.netns_check import measure_delays
from bench.procs import log
from bench.relay_cluster import FORWARDING_MODES, RelayCluster
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan
from bench.shardline_runner import run_round
from bench.stats import RunResult, summarize
from bench.workload import Workload
from protos import coordinator_pb2_grpc
from protos.runtime import GRPC_OPTIONS

LONG_TOKENS = 8  # new tokens per long-prompt request: only its TTFT goes into the table
NODE_PORT = 50051


@dataclass(frozen=True)
class TablePlan:
    delays_ms: list[float]  # each way, in the order measured
    concurrency: list[int]  # aggregate levels besides the single stream
    requests: int  # single-stream requests one after another, per prompt
    tokens: int  # new tokens per short-prompt request
    long_tokens: int = LONG_TOKENS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TablePlan:
        return cls(args.delays, args.table_concurrency, args.requests, args.tokens)


def _result(label: str, kind: str, c: int, rounds: list, n: int) -> RunResult:  # type: ignore[type-arg]
    mode = "sequential" if c == 1 else "concurrent streams"
    r = summarize(label, kind, c, mode, rounds, n, extra={"first_tokens": rounds[0].traces[0].token_ids[:32]})
    log(f"  {label} {kind} c={c}: aggregate {r.aggregate_tps:.1f} tok/s, TTFT p50 {r.ttft_p50_ms:.0f} ms, "
        f"per-stream {r.decode_tps_per_stream_mean:.1f} tok/s"
        f"{'' if r.all_counts_exact else '  (TOKEN COUNT/ERROR: ' + '; '.join(r.errors[:2]) + ')'}")
    return r


async def measure_relay(address: str, model: str, w: Workload, plan: TablePlan, label: str) -> list[RunResult]:
    """One relay at the current delay: short c=1 (in turn), short at every aggregate level, long c=1 (in turn)."""
    out: list[RunResult] = []
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        short = list(w.prompt("short").token_ids)
        rounds = [await run_round(stub, model, short, plan.tokens, 1, f"{label}-short-c1-{i}")
                  for i in range(plan.requests)]
        out.append(_result(label, "short", 1, rounds, plan.tokens))
        for c in plan.concurrency:
            out.append(_result(label, "short", c, [await run_round(stub, model, short, plan.tokens, c,
                                                                   f"{label}-short-c{c}")], plan.tokens))
        if any(p.kind == "long" for p in w.prompts):
            long = list(w.prompt("long").token_ids)
            rounds = [await run_round(stub, model, long, plan.long_tokens, 1, f"{label}-long-c1-{i}")
                      for i in range(plan.requests)]
            out.append(_result(label, "long", 1, rounds, plan.long_tokens))
    return out


async def warm_up(address: str, models: list[str], w: Workload) -> None:
    """One short and one long request per model before anything is measured (first-use costs off the 0 ms row)."""
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        for model in models:
            for p in w.prompts:
                r = await run_round(stub, model, list(p.token_ids), 4, 1, f"warmup-{model}-{p.kind}")
                if r.traces[0].error:
                    raise RuntimeError(f"warm-up request of {model} failed: {r.traces[0].error}")


class LatencyTable:
    """Runs the table into ``rep.netns`` (saved after every delay through ``save``)."""

    def __init__(self, rep: BenchReport, args: argparse.Namespace, w: Workload, run_dir: Path, node_threads: int,
                 save: Callable[[], None]) -> None:
        self.rep, self.args, self.w, self.save = rep, args, w, save
        self.plan = TablePlan.from_args(args)
        self.run_dir, self.node_threads = run_dir, node_threads
        self.topo = Topology(3, run_dir / "netns")

    def run(self) -> None:
        try:
            self.rep.netns["installed"] = ensure_prerequisites()
            self.topo.open()
        except NetnsUnavailable as e:
            self.topo.close()
            self.rep.skipped["netns"] = str(e)
            log(f"  network variant skipped: {e}")
            return
        n = self.rep.netns
        n.update(plan=asdict(self.plan), delay_checks={}, runs=[],
                 setup=describe_setup(self.plan.delays_ms, self.node_threads, self.topo.forward_policy))
        nodes = [NodePlan(f"node{i}", self.topo.node_ip(i), NODE_PORT, self.topo.prefix(i)) for i in (1, 2, 3)]
        cluster = RelayCluster(self.w, self.run_dir / "shardline-netns", nodes, self.node_threads,
                               self.args.pipeline_depth)
        log(f"  starting 3 shard nodes in namespaces + coordinator (models star + direct); logs in {cluster.run_dir}")
        try:
            cluster.start()
            n["wire_dtype"] = cluster.wire_dtype
            asyncio.run(warm_up(cluster.coord_address, [cluster.model(m) for m in FORWARDING_MODES], self.w))
            for i, d in enumerate(self.plan.delays_ms):
                self._delay_row(cluster, d, i)
                self.save()
        finally:
            cluster.stop()
            self.topo.close()
            log("  namespaces, veths, routes, iptables rules and delay daemons removed; ip_forward restored")

    def _delay_row(self, cluster: RelayCluster, d: float, index: int) -> None:
        self.topo.set_delay(d)
        check = measure_delays(self.topo)
        self.rep.netns["delay_checks"][f"{d:g}"] = check
        log(f"  {d:g} ms each way: TCP RTT p50 root<->node1 {check['root-node1']['tcp_rtt_p50_ms']:.2f} ms, "
            f"node1<->node2 {check['node1-node2']['tcp_rtt_p50_ms']:.2f} ms")
        if d > 0 and d == min(x for x in self.plan.delays_ms if x > 0) and not self.args.skip_hop:
            self._hop(d)
        modes = FORWARDING_MODES if index % 2 == 0 else tuple(reversed(FORWARDING_MODES))  # alternate who goes first
        for mode in modes:
            label = f"{mode} {d:g} ms"
            results = asyncio.run(measure_relay(cluster.coord_address, cluster.model(mode), self.w, self.plan, label))
            self.rep.netns["runs"] += [{"delay_ms": d, "forwarding": mode, **asdict(r)} for r in results]

    def _hop(self, d: float) -> None:
        from bench.hop import measure_hop

        res = measure_hop(self.run_dir, [1, 8, 32], 576, max(50, self.args.hop_messages // 5),
                          where=f"netns ({d:g} ms each way)", host=self.topo.node_ip(1), prefix=self.topo.prefix(1),
                          warmup=10)
        self.rep.hop += [r.__dict__ for r in res]


def run_latency_table(rep: BenchReport, args: argparse.Namespace, w: Workload, run_dir: Path, node_threads: int,
                      save: Callable[[], None]) -> None:
    LatencyTable(rep, args, w, run_dir, node_threads, save).run()
