"""latest.md: the benchmark's tables, ratios, memory, hop and network figures, and skipped parts."""

from __future__ import annotations

from pathlib import Path

from bench.latency_md import latency_section, targets_section, tls_hop_lines, wire_section
from bench.placement import placement_section
from bench.prefix import prefix_section
from bench.report import HF, LLAMACPP, SHARDLINE, BenchReport, _f, _mb, _x
from bench.scale_report import bandwidth_table, scale_lines
from bench.spec_md import speculative_section
from bench.stats import RunResult


def write_markdown(rep: BenchReport, path: Path) -> None:
    L = (_header_lines(rep) + _systems_lines(rep) + targets_section(rep) + _runs_lines(rep) + _formats_lines(rep)
         + _memory_section(rep) + _hop_lines(rep) + latency_section(rep) + wire_section(rep) + speculative_section(rep)
         + prefix_section(rep) + placement_section(rep) + scale_lines(rep) + _footer_lines(rep))
    path.write_text("\n".join(L))


def _header_lines(rep: BenchReport) -> list[str]:
    L: list[str] = ["# Shardline benchmark", ""]
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
    return L


def _systems_lines(rep: BenchReport) -> list[str]:
    L: list[str] = []
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
    return L


def _runs_lines(rep: BenchReport) -> list[str]:
    L: list[str] = []
    L.append("## Latency and throughput")
    L.append("")
    L += _runs_table(rep.runs)
    L.append("")
    L.append("## Ratios (same run)")
    L.append("")
    L.append("| prompt | c=1 decode tok/s: Shardline / transformers | c=1 decode tok/s: Shardline / llama.cpp | "
             "top-c aggregate: Shardline / transformers c=1 | … / transformers batch | … / llama.cpp c=1 |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for prompt, d in rep.ratios.items():
        L.append(f"| {prompt} (top c = {d.get('top_concurrency')}) | "
                 f"{_x(d['c1_decode_tps_shardline_over_transformers'])} | "
                 f"{_x(d['c1_decode_tps_shardline_over_llamacpp'])} | "
                 f"{_x(d.get('top_aggregate_shardline_over_transformers_c1'))} | "
                 f"{_x(d.get('top_aggregate_shardline_over_transformers_batch'))} | "
                 f"{_x(d.get('top_aggregate_shardline_over_llamacpp_c1'))} |")
    L.append("")
    return L


def _formats_lines(rep: BenchReport) -> list[str]:
    """Accuracy of each weight format against float32, and its speed against the peers (same run)."""
    L: list[str] = []
    if rep.formats:
        L += ["## Weight formats: accuracy (bench/formats.py, in-process, against float32)", "",
              "| format | perplexity (bench/data/perplexity.txt) | answers identical to float32 | tokens before the "
              "first difference, mean / min |", "|---|---:|---:|---:|"]
        for q in rep.formats:
            label = q["dtype"] if q["quantization"] == "none" else f"{q['dtype']}+{q['quantization']}"
            L.append(f"| {label} | {q['perplexity']:.2f} | {q['identical_share']:.0%} | "
                     f"{q['mean_tokens_to_divergence']:.1f} / {q['min_tokens_to_divergence']} |")
        L.append("")
    if rep.bandwidth:
        bw = rep.machine.get("memory_bandwidth", {})
        L += ["## Weight bandwidth at c = 1 (short prompt)", "",
              f"Ceiling: the machine's measured read bandwidth, {bw.get('read_gbps', 0):.1f} GB/s "
              f"({bw.get('threads', '?')} threads, bench/membw.py).", ""]
        L += bandwidth_table(rep.bandwidth)
    ratios = [(prompt, k, v) for prompt, d in rep.ratios.items() for k, v in d.items()
              if "+" in k or k.startswith(("c1_decode_tps_bfloat16", "c1_decode_tps_float16"))]
    if ratios:
        L += ["## Weight formats: speed ratios (same run)", "", "| prompt | ratio | value |", "|---|---|---:|"]
        L += [f"| {prompt} | {k} | {_x(v)} |" for prompt, k, v in ratios]
        L.append("")
    return L


def _hop_lines(rep: BenchReport) -> list[str]:
    L: list[str] = []
    if rep.hop:
        L.append("## One pipeline hop (serialize + gRPC + deserialize)")
        L.append("")
        L.append("Round trip of one decode micro-batch's hidden states [B, hidden] float32 through `protos/wire.py` "
                 "in a ForwardRequest/ForwardResponse over a bidi gRPC stream to an echo node (a separate process "
                 "that decodes and re-encodes, as a node does around its compute). Encode/decode columns are the "
                 "client-side costs alone, in process. Security: plaintext, or mutual TLS with the cluster token "
                 "(bench/hop_tls.py: a throwaway CA from ops/certs.py, both ends through protos/security.py).")
        L.append("")
        L.append("| path | security | B | payload | messages | RTT p50 (µs) | RTT p99 (µs) | encode p50 (µs) | "
                 "decode p50 (µs) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for h in rep.hop:
            L.append(f"| {h['where']} | {h.get('security', 'plaintext')} | {h['batch']} | "
                     f"{h['payload_bytes'] / 1024:.1f} KiB | {h['messages']} | "
                     f"{_f(h['rtt_p50_us'], 0)} | {_f(h['rtt_p99_us'], 0)} | {_f(h['encode_p50_us'], 0)} | "
                     f"{_f(h['decode_p50_us'], 0)} |")
        L.append("")
        L += tls_hop_lines(rep.hop)
    return L


def _footer_lines(rep: BenchReport) -> list[str]:
    L: list[str] = []
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
    return L


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


def _memory_section(rep: BenchReport) -> list[str]:
    L: list[str] = []
    sm = rep.memory.get(SHARDLINE)
    if not sm and not rep.memory:
        return L
    L.append("## Memory (peak RSS = VmHWM)")
    L.append("")
    L.append("| system | process | peak RSS | weights held | peak KV reserved (tokens → bytes) |")
    L.append("|---|---|---:|---:|---:|")
    formats = sorted(s for s in rep.memory if s.startswith(f"{SHARDLINE} "))
    for system in (SHARDLINE, *formats):
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
