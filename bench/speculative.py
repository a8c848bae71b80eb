"""The speculative-decoding section of `python -m bench` (issue 20): the same prompts with speculation off
(``no_speculation``) and on, in one cluster, off and on alternating request by request, on every link delay of
``--delays`` (3 shard nodes in network namespaces, bench/netns.py, one topology whose delay changes; 0 ms = the
veths without any queue rule; loopback only when namespaces cannot be had), at concurrency 1 and 8; plus monolithic
transformers on the copy-heavy prompts (bench/spec_hf.py), run before the cluster starts.

Everything goes into ``rep.speculative`` (streams as recorded); bench/spec_md.py makes the figures and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.netns import NetnsUnavailable, Topology, ensure_prerequisites
from bench.netns_check import measure_delays
from bench.procs import CpuMeter, log, run_worker, wait_for_quiet
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.spec_client import RoundSpec, run_round
from bench.spec_stats import StreamTrace, cell_pairs
from bench.spec_workload import CLASSES, COPY, MAX_TOKENS, SpecPrompt, build_spec_prompts, of_kind
from bench.workload import Workload
from ops.ports import free_ports
from ops.readiness import list_models
from protos import coordinator_pb2_grpc
from protos.runtime import GRPC_OPTIONS

CONCURRENCY = (1, 8)
QUICK_MAX_TOKENS = 64
NODE_PORT = 50051
QUIET_WAIT_S = 20.0  # before each delay: wait at most this long for other processes to leave the cores alone
HF_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class SpecPlan:
    delays_ms: list[float]  # each way, in the order measured
    concurrency: tuple[int, ...] = CONCURRENCY
    max_tokens: int = MAX_TOKENS  # a cap: prompts end at EOS
    requests: int = 1  # c = 1: streams per prompt and mode at every delay

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SpecPlan:
        return cls(list(args.delays), max_tokens=QUICK_MAX_TOKENS if args.quick else MAX_TOKENS)


def modes(k: int) -> tuple[bool, bool]:
    """Off then on for even ``k``, on then off for odd: a disturbance falls on both alike."""
    return (False, True) if k % 2 == 0 else (True, False)


def cycled(prompts: list[SpecPrompt], c: int) -> tuple[SpecPrompt, ...]:
    """``c`` streams: the prompts in turn (8 streams of 4 copy-heavy prompts: each twice)."""
    return tuple(prompts[i % len(prompts)] for i in range(c))


def round_plan(model: str, prompts: list[SpecPrompt], plan: SpecPlan, delay_ms: float) -> list[RoundSpec]:
    """Every round at one delay, in order: c = 1 prompt by prompt, then each class at every c > 1; off and on in
    pairs whose order alternates."""
    groups: list[tuple[SpecPrompt, ...]] = [(p,) for _ in range(plan.requests) for p in prompts]
    groups += [cycled(of_kind(prompts, kind), c) for c in plan.concurrency if c > 1 for kind in CLASSES
               if of_kind(prompts, kind)]
    out: list[RoundSpec] = []
    for k, group in enumerate(groups):
        for speculative in modes(k):
            index = len(out)
            tag = f"spec-{delay_ms:g}ms-{'on' if speculative else 'off'}-c{len(group)}-{index}"
            out.append(RoundSpec(model, group, speculative, delay_ms, index, plan.max_tokens, tag))
    return out


async def measure_delay(address: str, rounds: list[RoundSpec]) -> list[StreamTrace]:
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        out: list[StreamTrace] = []
        for spec in rounds:
            meter = CpuMeter()
            traces = await run_round(stub, spec)
            other = meter.stop()["other_cores_avg"]
            for t in traces:
                t.other_cores = other
            out += traces
        return out


async def warm_up(address: str, model: str, prompt: SpecPrompt) -> None:
    """One short request off and one on before anything is measured."""
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        for speculative in (False, True):
            traces = await run_round(stub, RoundSpec(model, (prompt,), speculative, 0.0, -1, 8, "spec-warmup"))
            if traces[0].error:
                raise RuntimeError(f"warm-up request failed: {traces[0].error}")


class SpeculativeSection:
    """Runs the section into ``rep.speculative`` (saved after the baseline and after every delay)."""

    def __init__(self, rep: BenchReport, args: argparse.Namespace, w: Workload, run_dir: Path, node_threads: int,
                 save: Callable[[], None]) -> None:
        self.rep, self.w, self.save = rep, w, save
        self.plan = SpecPlan.from_args(args)
        self.run_dir, self.node_threads, self.depth = run_dir / "speculative", node_threads, args.pipeline_depth
        self.topo: Topology | None = None

    def run(self) -> None:
        prompts = build_spec_prompts(Path(self.w.model_dir))
        sec = self.rep.speculative
        sec.update(plan=asdict(self.plan), streams=[], delay_checks={}, other_cores={},
                   prompts=[{"name": p.name, "kind": p.kind, "text": p.text, "num_tokens": len(p.token_ids)}
                            for p in prompts])
        self._transformers(of_kind(prompts, COPY))
        self.save()
        nodes, delays = self._network()
        cluster: ShardlineCluster | None = None
        try:
            cluster = ShardlineCluster(self.w, self.run_dir / "cluster", nodes, self.node_threads, self.depth)
            log(f"  starting 3 shard nodes + coordinator; logs in {cluster.run_dir}")
            cluster.start()
            model = next(m for m in list_models(cluster.coord_address).models if m.name == self.w.model_name)
            sec["speculation"] = {"speculative": model.speculative,
                                  "num_speculative_tokens": model.num_speculative_tokens}
            asyncio.run(warm_up(cluster.coord_address, self.w.model_name, prompts[0]))
            for d in delays:
                self._delay(cluster, prompts, d)
                self.save()
        finally:
            if cluster is not None:
                cluster.stop()
            if self.topo is not None:
                self.topo.close()
                log("  namespaces, veths, routes, iptables rules and delay daemons removed; ip_forward restored")

    def _network(self) -> tuple[list[NodePlan], list[float]]:
        """Nodes in namespaces for every delay, or on loopback at 0 ms only when namespaces cannot be had."""
        sec = self.rep.speculative
        topo = Topology(3, self.run_dir / "netns")
        try:
            ensure_prerequisites()
            topo.open()
        except NetnsUnavailable as e:
            topo.close()
            sec["where"] = "3 shard nodes + coordinator on loopback (127.0.0.1): network namespaces unavailable."
            sec["network_note"] = f"**Links with delay not measured**: {e}"
            log(f"  speculative section on loopback only: {e}")
            ports = free_ports(3)
            return [NodePlan(f"node{i + 1}", "127.0.0.1", ports[i]) for i in range(3)], [0.0]
        self.topo = topo
        sec["where"] = ("3 shard nodes, each in its own network namespace (the latency table's topology, "
                        "bench/netns.py), coordinator and clients in the root namespace, direct forwarding; one "
                        "cluster, its links' delay changed in turn (0 ms = the veths without any queue rule).")
        return [NodePlan(f"node{i}", topo.node_ip(i), NODE_PORT, topo.prefix(i)) for i in (1, 2, 3)], \
            list(self.plan.delays_ms)

    def _delay(self, cluster: ShardlineCluster, prompts: list[SpecPrompt], d: float) -> None:
        sec = self.rep.speculative
        if self.topo is not None:
            self.topo.set_delay(d)
            check = measure_delays(self.topo)
            sec["delay_checks"][f"{d:g}"] = check
            log(f"  {d:g} ms each way: TCP RTT p50 root<->node1 {check['root-node1']['tcp_rtt_p50_ms']:.2f} ms")
        waited = wait_for_quiet(QUIET_WAIT_S)
        if waited > 3:
            log(f"  waited {waited:.0f} s for other processes to leave the cores alone")
        meter = CpuMeter()
        traces = asyncio.run(measure_delay(cluster.coord_address,
                                           round_plan(self.w.model_name, prompts, self.plan, d)))
        sec["other_cores"][f"{d:g}"] = meter.stop()["other_cores_avg"]
        sec["streams"] += [t.to_json() for t in traces]
        _log_delay(traces, d)

    def _transformers(self, prompts: list[SpecPrompt]) -> None:
        spec = {"model_dir": self.w.model_dir, "threads": os.cpu_count(), "max_tokens": self.plan.max_tokens,
                "prompts": [{"name": p.name, "kind": p.kind, "token_ids": list(p.token_ids)} for p in prompts]}
        meter = CpuMeter()
        try:
            out = run_worker("bench.spec_hf", spec, self.run_dir, "transformers-speculative", timeout_s=HF_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - the Shardline part still runs without its baseline
            self.rep.speculative["transformers_error"] = f"{type(e).__name__}: {e}"
            log(f"  transformers baseline failed: {e}")
            return
        self.rep.speculative["transformers"] = {**out, "other_cores_avg": meter.stop()["other_cores_avg"]}


def _log_delay(traces: list[StreamTrace], d: float) -> None:
    for p in cell_pairs(traces):
        x, acc = p.speedup("tps_per_stream"), p.on.acceptance if p.on else None
        log(f"  {p.key.kind} {d:g} ms c={p.key.concurrency}: on/off "
            f"{'–' if x is None else f'{x:.2f}x'} per stream, acceptance {'–' if acc is None else f'{acc:.0%}'}")


def run_speculative(rep: BenchReport, args: argparse.Namespace, w: Workload, run_dir: Path, node_threads: int,
                    save: Callable[[], None]) -> None:
    SpeculativeSection(rep, args, w, run_dir, node_threads, save).run()
