"""The scale row's arithmetic, without processes: node budgets, KV room, weight bytes read per token, and the rows
the report shows (bench/scale_run.py measures, bench/scale_report.py renders)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from bench.scale_model import ScaleShape, fp32_bytes
from bench.stats import RunResult

BUDGET_SHARE = 0.45  # each node's budget over the model's fp32 size: no node holds it, nor do two (2 x 0.45 < 1)
KV_ROUND_TOKENS = 256


def node_budget_mb(shape: ScaleShape, share: float = BUDGET_SHARE) -> int:
    """Each node's ``memory_mb`` (weights + KV budgets it may hold): ``share`` of the fp32 size, in MiB."""
    if not 0 < share < 1:
        raise ValueError(f"budget share must be in (0, 1), got {share}")
    return math.floor(share * fp32_bytes(shape) / 2**20)


def kv_tokens(prompt_tokens: int, new_tokens: int, max_concurrency: int) -> int:
    """Each shard's KV budget: every stream of the widest round (prompt + new tokens each), rounded up."""
    need = max(1, max_concurrency) * (prompt_tokens + new_tokens)
    return -(-need // KV_ROUND_TOKENS) * KV_ROUND_TOKENS


def bytes_read_per_token(shards: list[dict[str, Any]]) -> int:
    """Weight bytes one decode step at c=1 reads: every shard's weights, except the first shard's embedding table
    when the head is on another shard (the lookup reads one row of it; a tied last shard holds its own head)."""
    total = 0
    for s in shards:
        total += s["weight_bytes"]
        if s["has_embedding"] and not s["has_head"]:
            total -= s["weight_bytes"] - s["layer_weight_bytes"]
    return total


def node_rows(memory: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per node of one format's cluster: layers, weights held, RSS (Info at the end) and peak RSS (VmHWM)."""
    out: dict[str, dict[str, Any]] = {}
    for node, info in memory["node_info"].items():
        shard = info["shards"][0] if info["shards"] else {}
        out[node] = {"layers": shard.get("layers"), "weight_bytes": shard.get("weight_bytes", 0),
                     "rss_bytes": info["rss_bytes"], "vm_hwm_bytes": memory["vm_hwm"].get(node, 0)}
    return out


def format_summary(memory: dict[str, Any], c1: RunResult | None) -> dict[str, Any]:
    """One format's nodes and, from its c=1 run, the weight bandwidth it achieved (weight bytes / decode time)."""
    shards = [s for info in memory["node_info"].values() for s in info["shards"]]
    per_token = bytes_read_per_token(shards)
    tps = c1.decode_tps_per_stream_mean if c1 else math.nan
    ok = math.isfinite(tps) and tps > 0
    return {"nodes": node_rows(memory), "bytes_read_per_token": per_token,
            "c1_decode_ms_per_token": 1e3 / tps if ok else None,
            "c1_weight_gbps": per_token * tps / 1e9 if ok else None, "c1_share_of_read_bandwidth": None}


def set_bandwidth_shares(formats: dict[str, dict[str, Any]], read_gbps: float | None) -> None:
    """Each format's c=1 weight bandwidth as a share of the machine's read bandwidth (the ceiling)."""
    for f in formats.values():
        gbps = f["c1_weight_gbps"]
        f["c1_share_of_read_bandwidth"] = gbps / read_gbps if gbps is not None and read_gbps else None


def run_row(label: str, r: RunResult) -> dict[str, Any]:
    """A measured run as the scale row keeps it: every figure of the other rows, plus the format."""
    return {"format": label, **asdict(r)}
