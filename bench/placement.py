"""The placement section of `python -m bench` (issue 22): three nodes on this machine, one of them held by a cgroup
to a quarter of the CPU the others may use (bench/cpu_quota.py), and the default model served twice by one cluster:
split by configured capacity (the config's model on the three nodes, as `make up` does) and placed for speed (the
same weights added at runtime without nodes: the coordinator measures each node's profile and chooses the split).
For each: the coordinator's prediction (PreviewModel) and the measured single-stream decode rate (greedy, one
request after another), so the figures say both how good the plan is and how good the prediction is."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bench.cpu_quota import CpuQuota, CpuQuotaUnavailable
from bench.procs import log
from bench.report import BenchReport
from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.workload import Workload
from ops.ports import free_ports
from protos import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from protos.runtime import GRPC_OPTIONS

SLOW_NODE = "node2"
SLOW_SHARE = 0.25  # of the CPU the other nodes may use
TOKENS = 48
REQUESTS = 3
TARGET_SPEEDUP, TARGET_ERROR = 1.3, 0.25


async def decode_rate(stub: coordinator_pb2_grpc.CoordinatorStub, model: str, prompt: list[int], tag: str) -> float:
    """Tokens per second after the first, of one greedy request of TOKENS tokens."""
    req = coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=prompt, max_tokens=TOKENS, ignore_eos=True,
                                          sampling=common_pb2.SamplingParams(), request_id=tag, no_speculation=True)
    times: list[float] = []
    async for msg in stub.Generate(req, timeout=600):
        times.extend([time.perf_counter()] * len(msg.token_ids))
        if msg.finish_reason and msg.error:
            raise RuntimeError(f"{tag}: {msg.error}")
    return (len(times) - 1) / (times[-1] - times[0])


def _plan(p: coordinator_pb2.PlanFigures) -> dict[str, Any]:
    return {"stages": [{"node": s.node_id, "layers": [s.layers.start, s.layers.end]} for s in p.stages],
            "predicted_tps": p.single_stream_tps}


async def measure(address: str, w: Workload, source: str) -> dict[str, Any]:
    prompt = list(w.prompt("short").token_ids)
    async with grpc.aio.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        nodes = [coordinator_pb2.StageNodes(node_ids=[n]) for n in ("node1", "node2", "node3")]
        capacity = await stub.PreviewModel(coordinator_pb2.AddModelRequest(name=w.model_name, source=source,
                                                                           stages=nodes), timeout=600)
        speed = await stub.PreviewModel(coordinator_pb2.AddModelRequest(name="placed-for-speed", source=source),
                                        timeout=600)
        await stub.AddModel(coordinator_pb2.AddModelRequest(name="placed-for-speed", source=source), timeout=600)
        out: dict[str, Any] = {"capacity": _plan(capacity.plan), "speed": _plan(speed.plan),
                               "left_out": {x.node_id: x.reason for x in speed.left_out},
                               "profiles": {n.node_id: {"layer_ms": n.layer_ms, "head_ms": n.head_ms,
                                                        "rtt_ms": n.rtt_ms, "threads": n.threads}
                                            for n in speed.nodes}}
        for key, model in (("capacity", w.model_name), ("speed", "placed-for-speed")):
            await decode_rate(stub, model, prompt, f"placement-{key}-warmup")
            rates = [await decode_rate(stub, model, prompt, f"placement-{key}-{i}") for i in range(REQUESTS)]
            out[key]["measured_tps"] = statistics.median(rates)
            out[key]["error"] = out[key]["predicted_tps"] / out[key]["measured_tps"] - 1
            log(f"  {key}: {out[key]['stages']}: predicted {out[key]['predicted_tps']:.1f} tok/s, measured "
                f"{out[key]['measured_tps']:.1f} ({out[key]['error']:+.0%})")
        out["speedup"] = out["speed"]["measured_tps"] / out["capacity"]["measured_tps"]
        return out


def run_placement(rep: BenchReport, w: Workload, run_dir: Path, node_threads: int) -> None:
    ports = free_ports(3)
    nodes = [NodePlan(f"node{i + 1}", "127.0.0.1", ports[i]) for i in range(3)]
    cluster = ShardlineCluster(w, run_dir / "placement", nodes, node_threads)
    cluster.start()
    quota: CpuQuota | None = None
    try:
        assert cluster.cluster is not None
        pid = cluster.cluster.pid(SLOW_NODE)
        assert pid is not None
        cores = os.cpu_count() or 1
        try:
            quota = CpuQuota.apply(pid, SLOW_SHARE * cores)
        except CpuQuotaUnavailable as e:
            rep.skipped["placement"] = str(e)
            log(f"  placement section skipped: {e}")
            return
        log(f"  {SLOW_NODE} held to {SLOW_SHARE * cores:g} of {cores} cores ({quota.group})")
        result = asyncio.run(measure(cluster.coord_address, w, Path(w.model_dir).name))
        result.update(slow_node=SLOW_NODE, slow_cores=SLOW_SHARE * cores, cores=cores)
        rep.placement = result
        log(f"  placed for speed / split by capacity, measured: {result['speedup']:.2f}x (target >= "
            f"{TARGET_SPEEDUP}x); prediction error: capacity {result['capacity']['error']:+.0%}, speed "
            f"{result['speed']['error']:+.0%} (target within {TARGET_ERROR:.0%})")
    finally:
        if quota is not None:
            quota.lift()
        cluster.stop()
    from bench.placement_links import run_placement_links

    run_placement_links(rep, w, run_dir, node_threads)


def placement_section(rep: BenchReport) -> list[str]:
    p = rep.placement
    if not p or "capacity" not in p:
        return links_section(p.get("links")) if p else []
    lines = ["", "## Placement for speed: one node throttled", "",
             f"Three nodes on this machine's {p['cores']} cores; {p['slow_node']} held by a cgroup to "
             f"{p['slow_cores']:g} core(s). The same model split by configured capacity (the config's nodes) and "
             f"placed for speed from the nodes' profiles (added at runtime without nodes); greedy, {TOKENS} tokens, "
             f"median of {REQUESTS} requests one after another.", "",
             "| plan | stages | predicted tok/s | measured tok/s | prediction error |", "|---|---|---|---|---|"]
    for key in ("capacity", "speed"):
        r = p[key]
        stages = ", ".join(f"{s['node']} [{s['layers'][0]},{s['layers'][1]})" for s in r["stages"])
        lines.append(f"| {key} | {stages} | {r['predicted_tps']:.1f} | {r['measured_tps']:.1f} | "
                     f"{r['error']:+.0%} |")
    ok = p["speedup"] >= TARGET_SPEEDUP and all(abs(p[k]["error"]) <= TARGET_ERROR for k in ("capacity", "speed"))
    lines += ["", f"Placed for speed: **{p['speedup']:.2f}x** the split by capacity (target >= {TARGET_SPEEDUP}x); "
              f"predictions within {TARGET_ERROR:.0%}: {'yes' if ok else 'NO'}. Left out: "
              + ("; ".join(f"{n}: {why}" for n, why in p["left_out"].items()) or "none") + "."]
    return lines + links_section(p.get("links"))


def links_section(p: dict[str, Any] | None) -> list[str]:
    if not p:
        return []
    delays = ", ".join(f"node{i} {d:g} ms" for i, d in enumerate(p["delays_ms"], 1))
    lines = ["", "## Placement for speed: uneven links", "",
             f"Three nodes, each in its own network namespace with a delay each way ({delays}; node i <-> node j: the "
             "sum of theirs). The coordinator's round trip to each node and the nodes' to each other (MeasureLinks) "
             "go into the prediction; greedy, one stream, as above.", "",
             "| plan | stages | predicted tok/s | measured tok/s | prediction error |", "|---|---|---|---|---|"]
    for key in ("capacity", "speed"):
        r = p[key]
        stages = ", ".join(f"{s['node']} [{s['layers'][0]},{s['layers'][1]})" for s in r["stages"])
        lines.append(f"| {key} | {stages} | {r['predicted_tps']:.1f} | {r['measured_tps']:.1f} | "
                     f"{r['error']:+.0%} |")
    lines += ["", f"Placed for speed: **{p['speedup']:.2f}x** the split by capacity; round trips measured by the "
              "coordinator: " + ", ".join(f"{n} {v['rtt_ms']:.1f} ms" for n, v in p["profiles"].items()) + "."]
    return lines
