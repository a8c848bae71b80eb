"""The latency table (the network variant of `python -m bench`): 3 shard nodes, each in its own network namespace
(bench/netns.py), one cluster serving the float32 model twice (star relay and direct forwarding,
bench/relay_cluster.py), measured on every link delay in turn (0 ms = the veths without any queue rule).

Per delay, cell by cell: the short prompt as one stream (``requests`` in turn: steps/s and tokens/s), ``c`` streams
at once for every aggregate level (``rounds`` rounds), the long prompt as one stream (its TTFT; few new tokens since
only the first one counts). Within a cell star and direct take turns request by request (round by round), in pairs
whose order alternates; a cell starts once other processes leave the cores alone (or after QUIET_WAIT_S) and records
the CPU they used meanwhile (a shared machine). Before each delay's runs: TCP round trips root <-> node and node <->
node (the delay must hit node -> node packets once per direction too), and at the first non-zero delay one pipeline
hop (bench/hop.py).
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
from bench.procs import CpuMeter, log, wait_for_quiet
from bench.relay_cluster import FORWARDING_MODES, RelayCluster, coordinator_settings
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan
from bench.shardline_runner import run_round
from bench.stats import Round, RunResult, draft_totals, summarize
from bench.workload import Workload
from protos import coordinator_pb2_grpc
from protos.runtime import GRPC_OPTIONS

LONG_TOKENS = 8  # new tokens per long-prompt request: only its TTFT goes into the table
AGGREGATE_ROUNDS = 2
NODE_PORT = 50051
QUIET_WAIT_S = 45.0  # before each cell: wait at most this long for other processes to leave the cores alone


@dataclass(frozen=True)
class TablePlan:
    delays_ms: list[float]  # each way, in the order measured
    concurrency: list[int]  # aggregate levels besides the single stream
    requests: int  # single-stream requests one after another, per prompt
    tokens: int  # new tokens per short-prompt request
    long_tokens: int = LONG_TOKENS
    rounds: int = AGGREGATE_ROUNDS  # rounds of c streams per aggregate level

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TablePlan:
        return cls(args.delays, args.table_concurrency, args.requests, args.table_tokens)


def _result(label: str, kind: str, c: int, rounds: list[Round], n: int) -> RunResult:
    mode = "sequential" if c == 1 else "concurrent streams"
    r = summarize(label, kind, c, mode, rounds, n, extra={"first_tokens": rounds[0].traces[0].token_ids[:32],
                                                         **draft_totals(rounds)})
    log(f"  {label} {kind} c={c}: aggregate {r.aggregate_tps:.1f} tok/s, TTFT p50 {r.ttft_p50_ms:.0f} ms, "
        f"per-stream {r.decode_tps_per_stream_mean:.1f} tok/s"
        f"{'' if r.all_counts_exact else '  (TOKEN COUNT/ERROR: ' + '; '.join(r.errors[:2]) + ')'}")
    return r


@dataclass(frozen=True)
class Cell:
    """One measurement of the table: a prompt kind at a concurrency (c = 1: ``requests`` in turn per relay)."""

    kind: str
    concurrency: int

    def tokens(self, plan: TablePlan) -> int:
        return plan.long_tokens if self.kind == "long" else plan.tokens


def cells(plan: TablePlan, w: Workload) -> list[Cell]:
    """Short c=1, short at every aggregate level, long c=1 (when the workload has the long prompt)."""
    out = [Cell("short", 1), *(Cell("short", c) for c in plan.concurrency)]
    return out + ([Cell("long", 1)] if any(p.kind == "long" for p in w.prompts) else [])


def interleaved(modes: tuple[str, ...], repetitions: int, start: int) -> list[str]:
    """Each mode ``repetitions`` times, in pairs whose order alternates (A B, B A, A B, ...; B A first if ``start``
    is odd), so a disturbance on the shared machine falls on both relays alike."""
    out: list[str] = []
    for rep in range(repetitions):
        out += list(modes) if (rep + start) % 2 == 0 else list(reversed(modes))
    return out


async def measure_cell(address: str, models: dict[str, str], w: Workload, plan: TablePlan, cell: Cell,
                       delay_ms: float, start: int) -> dict[str, RunResult]:
    """One cell for every relay, request by request (c = 1) or round by round (c > 1), interleaved."""
    n, c = cell.tokens(plan), cell.concurrency
    ids = list(w.prompt(cell.kind).token_ids)
    rounds: dict[str, list[Round]] = {mode: [] for mode in models}
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        order = interleaved(tuple(models), plan.requests if c == 1 else plan.rounds, start)
        for i, mode in enumerate(order):
            tag = f"{mode}-{delay_ms:g}ms-{cell.kind}-c{c}-{i}"
            rounds[mode].append(await run_round(stub, models[mode], ids, n, c, tag))
    return {mode: _result(f"{mode} {delay_ms:g} ms", cell.kind, c, rounds[mode], n) for mode in models}


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
            n["wire_dtype"], n["coordinator"] = cluster.wire_dtype, coordinator_settings(cluster.config_path)
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
        models = {mode: cluster.model(mode) for mode in FORWARDING_MODES}
        for k, cell in enumerate(cells(self.plan, self.w)):
            waited = wait_for_quiet(QUIET_WAIT_S)
            if waited > 3:
                log(f"  waited {waited:.0f} s for other processes to leave the cores alone")
            meter = CpuMeter()
            results = asyncio.run(measure_cell(cluster.coord_address, models, self.w, self.plan, cell, d, index + k))
            other = meter.stop()["other_cores_avg"]
            self.rep.netns["runs"] += [{"delay_ms": d, "forwarding": mode, "other_cores_avg": other, **asdict(r)}
                                       for mode, r in results.items()]

    def _hop(self, d: float) -> None:
        from bench.hop import measure_hop

        res = measure_hop(self.run_dir, [1, 8, 32], 576, max(50, self.args.hop_messages // 5),
                          where=f"netns ({d:g} ms each way)", host=self.topo.node_ip(1), prefix=self.topo.prefix(1),
                          warmup=10)
        self.rep.hop += [r.__dict__ for r in res]


def run_latency_table(rep: BenchReport, args: argparse.Namespace, w: Workload, run_dir: Path, node_threads: int,
                      save: Callable[[], None]) -> None:
    LatencyTable(rep, args, w, run_dir, node_threads, save).run()
