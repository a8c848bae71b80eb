"""Results out: latest.json (everything), latest.md (tables, ratios, skipped parts) and throughput.png."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import RunResult, ratio

SHARDLINE, HF, LLAMACPP, SHARDLINE_NETNS = "shardline", "transformers", "llama.cpp", "shardline-netns"


@dataclass
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    workload: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)  # per system
    hop: list[dict[str, Any]] = field(default_factory=list)
    netns: dict[str, Any] = field(default_factory=dict)
    systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # versions, threads, load times, notes
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why
    errors: dict[str, str] = field(default_factory=dict)  # part -> error
    checks: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    cpu_use: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> bench vs other processes

    def find(self, system: str, prompt: str, c: int) -> RunResult | None:
        return next((r for r in self.runs if r.system == system and r.prompt == prompt and r.concurrency == c), None)


def _f(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _mb(b: int | float | None) -> str:
    return "–" if not b else f"{b / 1e6:,.0f} MB"


def compute_ratios(rep: BenchReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cs = sorted({r.concurrency for r in rep.runs if r.system == SHARDLINE})
    top = max(cs) if cs else None
    for prompt in sorted({r.prompt for r in rep.runs}):
        d: dict[str, Any] = {}
        s1, h1, l1 = (rep.find(s, prompt, 1) for s in (SHARDLINE, HF, LLAMACPP))
        d["c1_decode_tps_shardline_over_transformers"] = ratio(s1 and s1.decode_tps_per_stream_mean,
                                                               h1 and h1.decode_tps_per_stream_mean)
        d["c1_decode_tps_shardline_over_llamacpp"] = ratio(s1 and s1.decode_tps_per_stream_mean,
                                                           l1 and l1.decode_tps_per_stream_mean)
        if top is not None:
            st, ht = rep.find(SHARDLINE, prompt, top), rep.find(HF, prompt, top)
            d["top_concurrency"] = top
            d["top_aggregate_shardline_over_transformers_c1"] = ratio(st and st.aggregate_tps, h1 and h1.aggregate_tps)
            d["top_aggregate_shardline_over_transformers_batch"] = ratio(st and st.aggregate_tps,
                                                                         ht and ht.aggregate_tps)
            d["top_aggregate_shardline_over_llamacpp_c1"] = ratio(st and st.aggregate_tps, l1 and l1.aggregate_tps)
            sn = rep.find(SHARDLINE_NETNS, prompt, top)
            d["top_aggregate_netns_over_loopback"] = ratio(sn and sn.aggregate_tps, st and st.aggregate_tps)
        out[prompt] = d
    return out


def _clean(x: Any) -> Any:
    """NaN / inf become null, so the file is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(rep: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(_clean(asdict(rep)), indent=2, default=str))


def _runs_table(runs: list[RunResult]) -> list[str]:
    lines = ["| system | prompt | conc. | mode | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | decode tok/s per stream "
             "(mean) | aggregate tok/s | requests × tokens | exact N |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|:---:|"]
    for r in runs:
        lines.append(f"| {r.system} | {r.prompt} | {r.concurrency} | {r.mode} | {_f(r.ttft_p50_ms, 0)} / "
                     f"{_f(r.ttft_p99_ms, 0)} | {_f(r.itl_p50_ms)} / {_f(r.itl_p99_ms)} | "
                     f"{_f(r.decode_tps_per_stream_mean)} | **{_f(r.aggregate_tps)}** | {r.requests} × "
                     f"{r.tokens_expected} | {'yes' if r.all_counts_exact else 'NO: ' + '; '.join(r.errors[:2])} |")
    return lines


def write_markdown(rep: BenchReport, path: Path) -> None:
    m, s = rep.machine, rep.settings
    L: list[str] = ["# Shardline benchmark", ""]
    dirty = " (uncommitted changes outside bench/)" if m.get("git_dirty") else ""
    L.append(f"{m.get('date')} · commit `{m.get('git_commit', '?')[:12]}`{dirty}"
             f" · {m.get('cpu_count')} CPUs ({m.get('cpu_model', '?')}) · {m.get('mem_gib', '?')} GiB · torch "
             f"{m.get('torch')} · transformers {m.get('transformers')} · Python {m.get('python')}")
    L.append("")
    w = rep.workload
    prompts = ", ".join(f"{p['kind']} = {p['num_tokens']} tokens" for p in w.get("prompts", []))
    L.append(f"Workload: model `{w.get('model_name')}`, prompts {prompts}; greedy, EOS ignored, exactly "
             f"{w.get('max_tokens')} new tokens per request; concurrency {w.get('concurrency')} (clients released "
             f"together after a barrier); concurrency 1 = {w.get('sequential_requests')} requests one after another. "
             f"One unmeasured warm-up request per system. Aggregate tok/s = generated tokens / (last token − release), "
             f"summed over rounds. Per-stream decode tok/s = (N−1) / (last token − first token).")
    L.append("")
    if s.get("quick"):
        L.append("**Quick run** (`--quick`): development settings, not the real benchmark.")
        L.append("")
    L.append("## Systems")
    L.append("")
    for name, info in rep.systems.items():
        L.append(f"- **{name}**: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    L.append("")
    if rep.skipped or rep.errors:
        L.append("## Skipped or failed parts")
        L.append("")
        for k, v in rep.skipped.items():
            L.append(f"- **{k}** skipped: {v}")
        for k, v in rep.errors.items():
            L.append(f"- **{k}** failed: {v}")
        L.append("")
    L.append("## Latency and throughput")
    L.append("")
    L += _runs_table([r for r in rep.runs if r.system != SHARDLINE_NETNS])
    L.append("")
    L.append("## Ratios (same run)")
    L.append("")
    L.append("| prompt | c=1 decode tok/s: Shardline / transformers | c=1 decode tok/s: Shardline / llama.cpp | "
             "top-c aggregate: Shardline / transformers c=1 | … / transformers batch | … / llama.cpp c=1 | "
             "netns / loopback (top c) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for prompt, d in rep.ratios.items():
        L.append(f"| {prompt} (top c = {d.get('top_concurrency')}) | "
                 f"{_x(d['c1_decode_tps_shardline_over_transformers'])} | "
                 f"{_x(d['c1_decode_tps_shardline_over_llamacpp'])} | "
                 f"{_x(d.get('top_aggregate_shardline_over_transformers_c1'))} | "
                 f"{_x(d.get('top_aggregate_shardline_over_transformers_batch'))} | "
                 f"{_x(d.get('top_aggregate_shardline_over_llamacpp_c1'))} | "
                 f"{_x(d.get('top_aggregate_netns_over_loopback'))} |")
    L.append("")
    L += _memory_section(rep)
    if rep.hop:
        L.append("## One pipeline hop (serialize + gRPC + deserialize)")
        L.append("")
        L.append("Round trip of one decode micro-batch's hidden states [B, hidden] float32 through `protos/wire.py` "
                 "in a ForwardRequest/ForwardResponse over a bidi gRPC stream to an echo node (a separate process "
                 "that decodes and re-encodes, as a node does around its compute). Encode/decode columns are the "
                 "client-side costs alone, in process.")
        L.append("")
        L.append("| path | B | payload | messages | RTT p50 (µs) | RTT p99 (µs) | encode p50 (µs) | decode p50 (µs) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for h in rep.hop:
            L.append(f"| {h['where']} | {h['batch']} | {h['payload_bytes'] / 1024:.1f} KiB | {h['messages']} | "
                     f"{_f(h['rtt_p50_us'], 0)} | {_f(h['rtt_p99_us'], 0)} | {_f(h['encode_p50_us'], 0)} | "
                     f"{_f(h['decode_p50_us'], 0)} |")
        L.append("")
    L += _netns_section(rep)
    if rep.checks:
        L.append("## Checks")
        L.append("")
        for k, v in rep.checks.items():
            L.append(f"- {k}: {v}")
        L.append("")
    if rep.timings_s:
        L.append("Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in rep.timings_s.items()))
        L.append("")
    if rep.cpu_use:
        L.append("CPU used by other processes on the machine during each part (anything but ~0 disturbs the "
                 "figures of that part): " + ", ".join(f"{k} {v['other_cpu_s']:.0f} CPU-s "
                                                       f"({v['other_cores_avg']:.2f} cores avg)"
                                                       for k, v in rep.cpu_use.items()))
        L.append("")
    L.append("![aggregate tokens/s vs concurrency](throughput.png)")
    L.append("")
    path.write_text("\n".join(L))


def _memory_section(rep: BenchReport) -> list[str]:
    L: list[str] = []
    sm = rep.memory.get(SHARDLINE)
    if not sm and not rep.memory:
        return L
    L.append("## Memory (peak RSS = VmHWM)")
    L.append("")
    L.append("| system | process | peak RSS | weights held | peak KV reserved (tokens → bytes) |")
    L.append("|---|---|---:|---:|---:|")
    for system in (SHARDLINE, SHARDLINE_NETNS):
        mem = rep.memory.get(system)
        if not mem:
            continue
        total = 0
        for proc, hwm in mem["vm_hwm"].items():
            total += hwm
            info = mem["node_info"].get(proc)
            weights, kv = "–", "–"
            if info and info["shards"]:
                sh = info["shards"][0]
                weights = _mb(sh["weight_bytes"]) + f" (layers {sh['layers'][0]}–{sh['layers'][1] - 1})"
                peak_tokens = max((p.get(proc, {}).get("kv_used_tokens", 0) for p in mem["kv_peaks"].values()),
                                  default=0)
                kv = f"{peak_tokens:,} → {_mb(peak_tokens * sh['kv_bytes_per_token'])}"
            L.append(f"| {system} | {proc} | {_mb(hwm)} | {weights} | {kv} |")
        L.append(f"| {system} | **all {len(mem['vm_hwm'])} processes** | **{_mb(total)}** | | |")
    for system in (HF, LLAMACPP):
        mem = rep.memory.get(system)
        if mem:
            L.append(f"| {system} | worker (whole model) | {_mb(mem.get('vm_hwm_bytes'))} | "
                     f"{mem.get('weights', '–')} | |")
    L.append("")
    L.append("KV is reserved per sequence as prompt + max_tokens (`kv_used_tokens` of Info, polled every 0.5 s); "
             "the node allocates it with torch.empty, so pages never written are not resident.")
    L.append("")
    return L


def _netns_section(rep: BenchReport) -> list[str]:
    L: list[str] = []
    n = rep.netns
    runs = [r for r in rep.runs if r.system == SHARDLINE_NETNS]
    if not n and not runs:
        return L
    L.append("## Network variant: every node in its own namespace, delay on each way")
    L.append("")
    if n.get("setup"):
        L.append(n["setup"])
        L.append("")
    if n.get("delay_check"):
        d = n["delay_check"]
        L.append(f"Delay check (node 1 ↔ root): TCP 64-byte request/response p50 {_f(d.get('tcp_rtt_p50_ms'), 2)} ms "
                 f"with the delay (before: {_f(n.get('delay_check_before', {}).get('tcp_rtt_p50_ms'), 2)} ms); "
                 f"`ping -U` avg {_f(d.get('ping_U_avg_ms'), 2)} ms.")
        L.append("")
    if runs:
        L += _runs_table(runs)
        L.append("")
        for prompt, d in rep.ratios.items():
            if d.get("top_aggregate_netns_over_loopback") is not None:
                L.append(f"- {prompt}: c={d['top_concurrency']} aggregate netns / loopback = "
                         f"{_x(d['top_aggregate_netns_over_loopback'])}")
        L.append("")
    return L


def plot(rep: BenchReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {SHARDLINE: ("tab:blue", "o"), HF: ("tab:orange", "s"), LLAMACPP: ("tab:green", "^"),
              SHARDLINE_NETNS: ("tab:purple", "D")}
    for system, (color, marker) in styles.items():
        for prompt, ls in (("short", "-"), ("long", "--")):
            pts = sorted((r.concurrency, r.aggregate_tps) for r in rep.runs
                         if r.system == system and r.prompt == prompt and math.isfinite(r.aggregate_tps))
            if not pts:
                continue
            label = f"{system} ({prompt})" + (" — batch for c>1" if system == HF else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker=marker, label=label,
                    markerfacecolor=color if prompt == "short" else "white")
    ax.set_xscale("log", base=2)
    cs = sorted({r.concurrency for r in rep.runs})
    if cs:
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
    ax.set_xlabel("concurrency (clients released together)")
    ax.set_ylabel("aggregate generated tokens/s")
    n = rep.workload.get("max_tokens")
    ax.set_title(f"{rep.workload.get('model_name')}, {n} new tokens, {rep.machine.get('cpu_count')} CPUs")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_report(path: Path) -> BenchReport:
    """A BenchReport back from latest.json (to re-render the markdown and the plot without re-running)."""
    d = json.loads(path.read_text())
    nan = float("nan")
    runs = [RunResult(**{k: (nan if v is None and k.endswith(("_ms", "_tps", "_p50", "_mean")) else v)
                         for k, v in r.items()}) for r in d.pop("runs", [])]
    return BenchReport(runs=runs, **d)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report", description="re-render latest.md and the plot")
    p.add_argument("json", nargs="?", default=str(Path(__file__).parent / "results" / "latest.json"))
    args = p.parse_args()
    src = Path(args.json)
    rep = load_report(src)
    write_markdown(rep, src.with_name("latest.md"))
    plot(rep, src.with_name("throughput.png"))


if __name__ == "__main__":
    main()
