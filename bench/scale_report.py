"""latest.md's "Scale row" section: rep.scale (bench/scale_run.py) as tables."""

from __future__ import annotations

from typing import Any

from bench.report import BenchReport, _f, _mb


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _gb(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} GB/s"


def _intro(s: dict[str, Any], bw: dict[str, Any]) -> list[str]:
    m = s["model"]
    return [
        "## Scale row: a 1.7B-shaped Llama over 3 memory-budgeted nodes", "",
        f"`{m['name']}`: Llama, {m['num_layers']} layers, hidden {m['hidden']}, intermediate {m['intermediate']}, "
        f"{m['heads']} heads / {m['kv_heads']} KV heads, vocab {m['vocab']}, tied embeddings; "
        f"{m['parameters'] / 1e9:.2f} B parameters = {_mb(4 * m['parameters'])} in float32. Random weights (seed "
        f"{m['seed']}, stored in {m['disk_dtype']}): its outputs are meaningless, its speed is not. Every node's "
        f"budget (`memory_mb`, weights + KV) is {s['node_budget_mb']:,} MiB = {s['budget_share']:.0%} of the float32 "
        f"size: no node, nor any two, could hold it in float32. KV budget {s['kv_cache_tokens']:,} tokens per shard. "
        f"Prompt {s['prompt']} ({s['prompt_tokens']} tokens), {s['new_tokens']} new tokens per request "
        "(`--scale-tokens`), same clients and definitions as the rows above.", "",
        f"Memory bandwidth measured on this machine (bench/membw.py, {bw.get('threads', '?')} threads, 1 GB "
        f"buffer, best of 10 repetitions, before and after the runs: the best of {len(bw.get('samples', [])) or 1}): "
        f"read {_gb(bw.get('read_gbps'))}, copy {_gb(bw.get('copy_gbps'))} (read + written).", "",
    ]


def _runs_table(s: dict[str, Any]) -> list[str]:
    L = ["| format | c | decode tok/s per stream (mean) | aggregate tok/s | TTFT p50 (ms) | ITL p50 (ms) | "
         "exact N |", "|---|---:|---:|---:|---:|---:|:---:|"]
    for r in s.get("runs", []):
        exact = "yes" if r["all_counts_exact"] else "NO: " + "; ".join(r["errors"][:2])
        L.append(f"| {r['format']} | {r['concurrency']} | {_f(r['decode_tps_per_stream_mean'], 2)} | "
                 f"**{_f(r['aggregate_tps'], 2)}** | {_f(r['ttft_p50_ms'], 0)} | {_f(r['itl_p50_ms'], 0)} | {exact} |")
    return L + [""]


def _nodes_table(s: dict[str, Any]) -> list[str]:
    L = ["| format | node | layers | weights held | node budget | RSS at the end | peak RSS (VmHWM) |",
         "|---|---|---|---:|---:|---:|---:|"]
    budget = _mb(s["node_budget_mb"] * 2**20)
    for label, f in s.get("formats", {}).items():
        for node, n in f["nodes"].items():
            layers = f"{n['layers'][0]}–{n['layers'][1] - 1}" if n["layers"] else "–"
            L.append(f"| {label} | {node} | {layers} | {_mb(n['weight_bytes'])} | {budget} | {_mb(n['rss_bytes'])} | "
                     f"{_mb(n['vm_hwm_bytes'])} |")
    return L + [""]


def bandwidth_table(formats: dict[str, Any]) -> list[str]:
    """One row per format (or system): weight bytes per token, c=1 decode time, achieved GB/s, share of ceiling."""
    L = ["| format | weight bytes read per token | c=1 decode time per token | achieved weight GB/s | share of the "
         "read bandwidth |", "|---|---:|---:|---:|---:|"]
    for label, f in formats.items():
        L.append(f"| {label} | {_mb(f['bytes_read_per_token'])} | {_f(f['c1_decode_ms_per_token'], 0)} ms | "
                 f"{_gb(f['c1_weight_gbps'])} | {_pct(f['c1_share_of_read_bandwidth'])} |")
    L += ["", "Bytes read per token: every shard's weights, less the first shard's embedding table (a lookup reads "
          "one row; the last shard holds the tied head). Decode time per token: 1 / the c=1 per-stream decode tok/s, "
          "so it includes every hop, the coordinator and Python, not only the matmuls.", ""]
    return L


def scale_lines(rep: BenchReport) -> list[str]:
    """The section, or nothing when the scale row did not run."""
    s = rep.scale
    if not s.get("model"):
        return []
    L = _intro(s, rep.machine.get("memory_bandwidth", {})) + _runs_table(s) + _nodes_table(s)
    L += bandwidth_table(s.get("formats", {}))
    for label, err in s.get("errors", {}).items():
        L.append(f"- **{label}** failed: {err.splitlines()[0] if err else ''}")
    return L + ([""] if s.get("errors") else [])
