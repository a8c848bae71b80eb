"""Shardline under test: drive Generate streams against a started ShardlineCluster (bench/shardline_cluster.py),
read every node's Info (KV, sequences, RSS) while it runs, and the peak RSS of its processes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc

from bench.procs import log
from bench.shardline_cluster import NodePlan, ShardlineCluster
from bench.stats import RequestTrace, Round, RunResult, draft_totals, summarize
from bench.workload import Workload
from protos import common_pb2, coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc
from protos.runtime import GRPC_OPTIONS

REQUEST_TIMEOUT_S = 1800.0


# ----------------------------------------------------------------------------------------------- clients


async def _generate(stub: coordinator_pb2_grpc.CoordinatorStub, model: str, ids: list[int], n: int, rid: str,
                    go: asyncio.Event, release: list[float]) -> RequestTrace:
    await go.wait()
    times: list[float] = []
    out: list[int] = []
    finish, err = "", ""
    drafts = (0, 0)  # the request's draft_proposed, draft_accepted so far
    req = coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=ids, max_tokens=n,
                                          sampling=common_pb2.SamplingParams(), ignore_eos=True, request_id=rid)
    try:
        async for msg in stub.Generate(req, timeout=REQUEST_TIMEOUT_S):
            now = time.perf_counter()
            times.extend([now] * len(msg.token_ids))
            out.extend(msg.token_ids)
            drafts = max(drafts, (msg.draft_proposed, msg.draft_accepted))
            if msg.finish_reason:
                finish, err = msg.finish_reason, msg.error
    except grpc.aio.AioRpcError as e:
        err = f"{e.code().name}: {e.details()}"
    if finish and finish != "length" and not err:
        err = f"finish_reason {finish!r} after {len(out)} tokens"
    return RequestTrace(t_release=release[0], token_times=times, token_ids=out, finish_reason=finish, error=err,
                        draft_proposed=drafts[0], draft_accepted=drafts[1])


async def run_round(stub: coordinator_pb2_grpc.CoordinatorStub, model: str, ids: list[int], n: int, c: int,
                    tag: str) -> Round:
    """c clients wait on one barrier, are released together, and stream their tokens."""
    go = asyncio.Event()
    release = [0.0]
    tasks = [asyncio.create_task(_generate(stub, model, ids, n, f"{tag}-{i}", go, release)) for i in range(c)]
    await asyncio.sleep(0.05)  # every task is now parked on the barrier
    release[0] = time.perf_counter()
    go.set()
    return Round(list(await asyncio.gather(*tasks)))


class InfoPoller:
    """Polls every node's Info while a run is going: peak KV in use, sequences, RSS."""

    def __init__(self, nodes: list[NodePlan], period_s: float = 0.5) -> None:
        self.nodes = nodes
        self.period_s = period_s
        self.peak: dict[str, dict[str, int]] = {n.node_id: {"kv_used_tokens": 0, "num_sequences": 0, "rss_bytes": 0}
                                                 for n in nodes}
        self._task: asyncio.Task[None] | None = None
        self.channels = [grpc.aio.insecure_channel(n.address, options=GRPC_OPTIONS) for n in nodes]

    async def _loop(self) -> None:
        stubs = [shard_pb2_grpc.ShardNodeStub(ch) for ch in self.channels]
        while True:
            replies = await asyncio.gather(*(s.Info(shard_pb2.InfoRequest(), timeout=5.0) for s in stubs),
                                           return_exceptions=True)
            for n, r in zip(self.nodes, replies):
                if isinstance(r, shard_pb2.NodeInfo):
                    p = self.peak[n.node_id]
                    p["rss_bytes"] = max(p["rss_bytes"], r.rss_bytes)
                    for s in r.shards:
                        p["kv_used_tokens"] = max(p["kv_used_tokens"], s.kv_used_tokens)
                        p["num_sequences"] = max(p["num_sequences"], s.num_sequences)
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> dict[str, dict[str, int]]:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - polling only
                pass
        for ch in self.channels:
            await ch.close()
        return self.peak


async def node_infos(nodes: list[NodePlan]) -> dict[str, dict[str, Any]]:
    """Weights and KV figures of each node's shard (Info RPC)."""
    out: dict[str, dict[str, Any]] = {}
    for n in nodes:
        async with grpc.aio.insecure_channel(n.address, options=GRPC_OPTIONS) as ch:
            r = await shard_pb2_grpc.ShardNodeStub(ch).Info(shard_pb2.InfoRequest(), timeout=10.0)
        shards = [{"model": s.model, "layers": [s.layers.start, s.layers.end], "weight_bytes": s.weight_bytes,
                   "layer_weight_bytes": s.layer_weight_bytes, "kv_capacity_tokens": s.kv_capacity_tokens,
                   "kv_used_tokens": s.kv_used_tokens, "has_embedding": s.has_embedding, "has_head": s.has_head,
                   "dtype": s.dtype} for s in r.shards]
        out[n.node_id] = {"rss_bytes": r.rss_bytes, "shards": shards}
    return out


def kv_bytes_per_token(model_dir: str, layers: int) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * layers * kv_heads * head_dim * 4  # float32


async def measure(cluster: ShardlineCluster, workload: Workload, system: str, prompts: list[str],
                  concurrency: list[int]) -> tuple[list[RunResult], dict[str, Any]]:
    """Every prompt kind x concurrency against a started cluster; returns results and per-node memory figures."""
    model = workload.model_name
    n = workload.max_tokens
    results: list[RunResult] = []
    kv_peaks: dict[str, dict[str, dict[str, int]]] = {}
    async with grpc.aio.insecure_channel(cluster.coord_address, options=GRPC_OPTIONS) as ch:
        stub = coordinator_pb2_grpc.CoordinatorStub(ch)
        warm = await run_round(stub, model, list(workload.prompts[0].token_ids), 4, 1, "warmup")
        if warm.traces[0].error:
            raise RuntimeError(f"warm-up request failed: {warm.traces[0].error}")
        for kind in prompts:
            ids = list(workload.prompt(kind).token_ids)
            for c in concurrency:
                poller = InfoPoller(cluster.nodes)
                poller.start()
                if c == 1:
                    rounds = []
                    for i in range(workload.sequential_requests):
                        rounds.append(await run_round(stub, model, ids, n, 1, f"{system}-{kind}-c1-{i}"))
                    mode = "sequential"
                else:
                    rounds = [await run_round(stub, model, ids, n, c, f"{system}-{kind}-c{c}")]
                    mode = "concurrent streams"
                peak = await poller.stop()
                key = f"{kind}/c={c}"
                kv_peaks[key] = peak
                r = summarize(system, kind, c, mode, rounds, n,
                              extra={"node_peaks": peak, **draft_totals(rounds),
                                     "first_tokens": rounds[0].traces[0].token_ids[:32]})
                results.append(r)
                log(f"  {system} {kind} c={c}: aggregate {r.aggregate_tps:.1f} tok/s, TTFT p50 {r.ttft_p50_ms:.0f} ms, "
                    f"ITL p50 {r.itl_p50_ms:.1f} ms, per-stream {r.decode_tps_per_stream_mean:.1f} tok/s"
                    f"{'' if r.all_counts_exact else '  (TOKEN COUNT/ERROR: ' + '; '.join(r.errors[:2]) + ')'}")
    infos = await node_infos(cluster.nodes)
    for info in infos.values():
        for s in info["shards"]:
            s["kv_bytes_per_token"] = kv_bytes_per_token(workload.model_dir, s["layers"][1] - s["layers"][0])
    rss = cluster.peak_rss()
    memory = {"vm_hwm": {k: v.get("VmHWM", 0) for k, v in rss.items()},
              "vm_rss_end": {k: v.get("VmRSS", 0) for k, v in rss.items()},
              "node_info": infos, "kv_peaks": kv_peaks, "threads_per_node": cluster.threads,
              "pipeline_depth": cluster.pipeline_depth or "default"}
    return results, memory
