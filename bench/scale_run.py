"""The scale row (`python -m bench`, part "scale"): Shardline on a random-weight 1.7B Llama (bench/scale_model.py)
over 3 nodes whose memory budgets are each below its float32 size, in float32 and every --formats format; tok/s at
each concurrency with the same workload code and definitions as the other rows, weights and RSS per node, and the
weight bandwidth achieved at c=1 against the machine's measured memory bandwidth (bench/membw.py)."""

from __future__ import annotations

import asyncio
import json
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.membw import Bandwidth, measure_bandwidth
from bench.procs import log
from bench.report import BenchReport
from bench.scale_model import SCALE_CACHE_DIR, ScaleShape, ensure_model, is_prepared, param_count
from bench.scale_plan import BUDGET_SHARE, format_summary, kv_tokens, node_budget_mb, run_row, set_bandwidth_shares
from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.stats import RunResult
from bench.weight_formats import FLOAT32, WeightFormat
from bench.workload import Workload

PROMPT = "short"  # the scale row's prompt kind when the bench has it (else the bench's first kind)
RPC_TIMEOUT_S = 300.0  # one micro-batch on one node (a c=32 prefill of 1.7B on shared cores is slow); below the
# nodes' KV idle TTL (limits.kv_idle_ttl_s, 600 s), as the nodes require


class ScaleCluster(ShardlineCluster):
    """ShardlineCluster with a memory budget on every node and the scale model's KV budget."""

    def __init__(self, workload: Workload, run_dir: Path, nodes: list[NodePlan], threads: int,
                 pipeline_depth: int | None, fmt: WeightFormat, memory_mb: int, kv_cache_tokens: int) -> None:
        super().__init__(workload, run_dir, nodes, threads, pipeline_depth, fmt)
        self.memory_mb, self.kv_cache_tokens = memory_mb, kv_cache_tokens

    label = "scale model"

    def write_cluster_config(self) -> None:
        super().write_cluster_config()
        cfg = json.loads(self.config_path.read_text())
        cfg["models"][0].update(source=self.workload.model_dir, kv_cache_tokens=self.kv_cache_tokens)
        for node in cfg["nodes"]:
            node["memory_mb"] = self.memory_mb
        cfg["coordinator"]["rpc_timeout_s"] = RPC_TIMEOUT_S
        self.config_path.write_text(json.dumps(cfg, indent=2))


def scale_workload(base: Workload, folder: Path, shape: ScaleShape, new_tokens: int) -> Workload:
    """The bench's short prompt (same tokenizer, same ids) against the scale model, ``new_tokens`` each."""
    prompt = next((p for p in base.prompts if p.kind == PROMPT), base.prompts[0])
    return replace(base, model_name=shape.name, model_dir=str(folder), gguf_path=None, max_tokens=new_tokens,
                   prompts=[prompt])


def run_format(args: Any, w: Workload, run_dir: Path, fmt: WeightFormat, memory_mb: int, kv: int
               ) -> tuple[list[Any], dict[str, Any]]:
    """One format: a fresh 3-node cluster, every concurrency; the runs and the nodes' memory figures."""
    from bench.shardline_runner import measure
    from ops.ports import free_ports

    ports = free_ports(3)
    nodes = [NodePlan(f"node{i + 1}", "127.0.0.1", ports[i]) for i in range(3)]
    cluster = ScaleCluster(w, run_dir / f"scale-{fmt.label}", nodes, args.node_threads, args.pipeline_depth, fmt,
                           memory_mb, kv)
    log(f"  scale {fmt.label}: 3 nodes, {memory_mb:,} MiB budget each; logs in {cluster.run_dir}")
    try:
        cluster.start()
        return asyncio.run(measure(cluster, w, f"scale {fmt.label}", [w.prompts[0].kind], args.concurrency))
    finally:
        cluster.stop()


def record_bandwidth(rep: BenchReport, bw: Bandwidth) -> None:
    """rep.machine["memory_bandwidth"]: the best read and copy figures of every measurement, and each sample."""
    log(f"  memory bandwidth: read {bw.read_gbps:.1f} GB/s, copy {bw.copy_gbps:.1f} GB/s ({bw.threads} threads)")
    prev = rep.machine.get("memory_bandwidth", {})
    samples = [*prev.get("samples", []), bw.to_json()]
    rep.machine["memory_bandwidth"] = {"read_gbps": max(s["read_gbps"] for s in samples),
                                       "copy_gbps": max(s["copy_gbps"] for s in samples), "threads": bw.threads,
                                       "buffer_bytes": bw.buffer_bytes, "samples": samples}


def record_weight_bandwidth(rep: BenchReport, system: str, results: list[RunResult], memory: dict[str, Any]) -> None:
    """rep.bandwidth[system]: weight bytes one c=1 decode step reads x steps per second (short prompt), and its
    share of the machine's read bandwidth (measured here the first time)."""
    if "memory_bandwidth" not in rep.machine:
        record_bandwidth(rep, measure_bandwidth())
    c1 = next((r for r in results if r.concurrency == 1 and r.prompt == "short"), None)
    summary = format_summary(memory, c1)
    summary.pop("nodes")
    rep.bandwidth[system] = summary
    set_bandwidth_shares(rep.bandwidth, rep.machine["memory_bandwidth"]["read_gbps"])


def run_scale(rep: BenchReport, args: Any, base: Workload, run_dir: Path, save: Any) -> None:
    """Every format (float32 first) into ``rep.scale``; ``save()`` after each, so a failure keeps the others."""
    shape = ScaleShape()
    written = "in the cache" if is_prepared(SCALE_CACHE_DIR / shape.name, shape) else "writing it (once)"
    log(f"  scale model: {param_count(shape) / 1e9:.2f} B parameters (random, seed {shape.seed}), {written}")
    folder = ensure_model(shape, SCALE_CACHE_DIR)
    w = scale_workload(base, folder, shape, args.scale_tokens)
    memory_mb = node_budget_mb(shape)
    prompt_tokens = len(w.prompts[0].token_ids)
    kv = kv_tokens(prompt_tokens, w.max_tokens, max(args.concurrency))
    record_bandwidth(rep, measure_bandwidth())
    rep.scale.update(model={**asdict(shape), "parameters": param_count(shape), "folder": str(folder)},
                     node_budget_mb=memory_mb, budget_share=BUDGET_SHARE, kv_cache_tokens=kv,
                     new_tokens=w.max_tokens, prompt=w.prompts[0].kind, prompt_tokens=prompt_tokens,
                     concurrency=args.concurrency, formats={}, runs=[], errors={})
    for fmt in [FLOAT32, *[f for f in args.formats if f != FLOAT32]]:
        try:
            results, memory = run_format(args, w, run_dir, fmt, memory_mb, kv)
        except Exception as e:  # noqa: BLE001 - one format failing must not lose the others
            rep.scale["errors"][fmt.label] = f"{type(e).__name__}: {e}"
            log(f"  scale {fmt.label} FAILED: {type(e).__name__}: {e}")
            (run_dir / f"scale-{fmt.label}.traceback.txt").write_text(traceback.format_exc())
            save()
            continue
        c1 = next((r for r in results if r.concurrency == 1), None)
        rep.scale["formats"][fmt.label] = format_summary(memory, c1)
        rep.scale["runs"] += [run_row(fmt.label, r) for r in results]
        set_bandwidth_shares(rep.scale["formats"], rep.machine["memory_bandwidth"]["read_gbps"])
        save()
    record_bandwidth(rep, measure_bandwidth())  # again after the runs: the best of both is the ceiling
    set_bandwidth_shares(rep.scale["formats"], rep.machine["memory_bandwidth"]["read_gbps"])
    if not rep.scale["formats"]:
        raise RuntimeError("no format ran: " + "; ".join(f"{k}: {v}" for k, v in rep.scale["errors"].items()))
