"""latest.md's sections for issue 19: the latency table (network variant), the wire dtypes, TLS on one hop, and
the targets checked in words."""

from __future__ import annotations

from typing import Any

from bench.latency_report import (
    TableRow,
    added_per_step,
    delay_multiplicity,
    find_row,
    outputs_identical,
    ratio,
    table_rows,
)
from bench.report import HF, BenchReport, _f, _x
from bench.targets import TargetCheck, cheapest_identical, check_targets


def latency_rows(rep: BenchReport) -> list[TableRow]:
    tokens = {p["kind"]: p["num_tokens"] for p in rep.workload.get("prompts", [])}
    return table_rows(rep.netns.get("runs", []), tokens)


def report_targets(rep: BenchReport) -> list[TargetCheck]:
    hf = rep.find(HF, "long", 1)
    return check_targets(latency_rows(rep), hf.ttft_p50_ms if hf else None, rep.wire_dtypes)


def targets_json(rep: BenchReport) -> list[dict[str, Any]]:
    return [{"name": t.name, "target": t.target, "ratio": t.ratio, "met": t.met, "detail": t.detail,
             "sentence": t.sentence()} for t in report_targets(rep)]


def _table(rows: list[TableRow], cs: list[int]) -> list[str]:
    head = ("| link each way (RTT) | relay | one stream: steps/s | one stream: tokens/s | "
            + " | ".join(f"aggregate tok/s, c = {c}" for c in cs)
            + " | TTFT 500-token prompt (ms) | prompt tok/s to first token | exact N | other CPU (cores) |")
    L = [head, "|---|---|" + "---:|" * (2 + len(cs) + 2) + ":---:|---:|"]
    for r in rows:
        L.append(f"| {r.delay_ms:g} ms ({2 * r.delay_ms:g} ms) | {r.forwarding} | {_f(r.steps_per_s)} | "
                 f"{_f(r.tokens_per_s)} | " + " | ".join(f"**{_f(r.aggregate_tps.get(c))}**" for c in cs)
                 + f" | {_f(r.ttft_long_ms, 0)} | {_f(r.prefill_tps, 0)} | {'yes' if r.exact else 'NO'} | "
                 f"{_f(r.other_cores, 2)} |")
    return L


def _direct_over_star(rows: list[TableRow], cs: list[int]) -> list[str]:
    L = ["| link each way | steps/s | " + " | ".join(f"c = {c}" for c in cs) + " | TTFT long |",
         "|---|---:|" + "---:|" * len(cs) + "---:|"]
    for d in sorted({r.delay_ms for r in rows}):
        a, b = find_row(rows, d, "direct"), find_row(rows, d, "star")
        if a is None or b is None:
            continue
        L.append(f"| {d:g} ms | {_x(ratio(a.steps_per_s, b.steps_per_s))} | "
                 + " | ".join(_x(ratio(a.aggregate_tps.get(c), b.aggregate_tps.get(c))) for c in cs)
                 + f" | {_x(ratio(a.ttft_long_ms, b.ttft_long_ms))} |")
    return L


def _added_lines(rows: list[TableRow]) -> list[str]:
    added = added_per_step(rows)
    if not added:
        return []
    L = ["Time a single-stream decode step gains over the same relay at 0 ms, and that in one-way delays (3 stages: "
         "direct forwarding should cost K + 1 = 4, the star relay 2K = 6):", "",
         "| link each way | relay | ms added per step | one-way delays per step |", "|---|---|---:|---:|"]
    L += [f"| {d:g} ms | {mode} | {ms:.1f} | {trips:.1f} |" for (d, mode), (ms, trips) in added.items()]
    return L + [""]


def _delay_checks(n: dict[str, Any]) -> list[str]:
    checks = n.get("delay_checks", {})
    if not checks:
        return []
    times = delay_multiplicity(checks)
    L = ["| delay each way | TCP RTT p50 root ↔ node1 (ms) | node1 ↔ node2 (ms) | `ping -U` root → node1 / node1 → "
         "node2 (ms) | waits per direction, root ↔ node / node ↔ node |", "|---|---:|---:|---:|---:|"]
    for delay, paths in checks.items():
        rn, nn = paths.get("root-node1", {}), paths.get("node1-node2", {})
        k = times.get(delay, {})
        L.append(f"| {delay} ms | {_f(rn.get('tcp_rtt_p50_ms'), 2)} | {_f(nn.get('tcp_rtt_p50_ms'), 2)} | "
                 f"{_f(rn.get('ping_U_avg_ms'), 2)} / {_f(nn.get('ping_U_avg_ms'), 2)} | "
                 f"{_f(k.get('root-node1'), 2)} / {_f(k.get('node1-node2'), 2)} |")
    return L + ["", "Waits per direction = (RTT − RTT at 0 ms) / (2 × delay): 1.00 means each packet waited once."]


def latency_section(rep: BenchReport) -> list[str]:
    n = rep.netns
    if not n.get("runs") and not n.get("setup"):
        return []
    plan = n.get("plan", {})
    cs = list(plan.get("concurrency", []))
    rows = latency_rows(rep)
    L = ["## Latency table: 3 stages in network namespaces, star relay vs direct forwarding", ""]
    if n.get("setup"):
        L += [n["setup"], ""]
    coord = ", ".join(f"{k} `{v}`" for k, v in n.get("coordinator", {}).items())
    L += [f"Float32 weights, wire dtype `{n.get('wire_dtype', 'auto')}`, both relays as two models of one cluster "
          f"(the same nodes and links); coordinator settings: {coord or 'not recorded'}. Short prompt: "
          f"{plan.get('requests')} single-stream requests per relay and {plan.get('rounds', 1)} round(s) per "
          f"aggregate level, {plan.get('tokens')} new tokens per request; 500-token prompt: {plan.get('requests')} "
          f"requests per relay, {plan.get('long_tokens')} new tokens each (its TTFT p50 only). Relays take turns "
          "request by request (round by round), in pairs whose order alternates. Steps/s = (N − 1) / (last token − "
          "first token) of one stream, median request (Petals' inference steps/s); tokens/s = N / (last token − "
          "release) over the requests, TTFT included; "
          "prompt tok/s = 500 / TTFT (Petals' forward-pass column). Other CPU: the most that processes outside the "
          "bench used during one of the row's measurements, in cores of this machine (anything but ~0 disturbs it).",
          ""]
    L += _delay_checks(n) + [""]
    L += _table(rows, cs) + ["", "Direct forwarding / star relay (same delay; above 1 is better for steps and "
                             "tokens/s, below 1 for TTFT):", ""]
    L += _direct_over_star(rows, cs) + [""] + _added_lines(rows)
    same = outputs_identical(n.get("runs", []))
    if same:
        L += ["Greedy output identical across every delay and relay (first 32 tokens, c = 1): "
              + ", ".join(f"{p} {'yes' if ok else 'NO'}" for p, ok in same.items()), ""]
    return L


def wire_section(rep: BenchReport) -> list[str]:
    rows = rep.wire_dtypes
    if not rows:
        return []
    L = ["## Wire dtypes: hidden states between stages (bench/wire_dtypes.py, in process)", "",
         f"The float32 model split as the cluster splits it ({rows[0]['stages']}), every hidden state through "
         f"protos/activations.py encode_hidden / decode_hidden; greedy output against the float32 wire on "
         f"{rows[0]['prompts']} prompts (bench/formats.py's chat prompts and the bench's 500-token prompt). Bytes per "
         "token: per link between two stages, measured on the decode steps' frames (a decode step with 3 stages "
         "crosses 2 links with direct forwarding, 4 through the star relay).", "",
         "| wire dtype | bytes per token per link | vs float32 | outputs identical | tokens before the first "
         "difference, mean / min |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['wire_dtype']} | {r['bytes_per_token']:.0f} | {_x(r['bytes_share_of_float32'])} | "
                 f"{r['identical_share']:.0%} | {r['mean_tokens_to_divergence']:.1f} / "
                 f"{r['min_tokens_to_divergence']} |")
    best = cheapest_identical(rows)
    return L + ["", f"Cheapest wire dtype that keeps greedy output identical on these prompts: **{best or 'none'}**.",
                ""]


def tls_hop_lines(hop: list[dict[str, Any]]) -> list[str]:
    """TLS + token against plaintext, per batch size, where both were measured on the same path."""
    L = []
    for h in hop:
        if h.get("security", "plaintext") == "plaintext":
            continue
        plain = next((p for p in hop if p["where"] == h["where"] and p["batch"] == h["batch"]
                      and p.get("security", "plaintext") == "plaintext"), None)
        if plain:
            L.append(f"- {h['where']}, B = {h['batch']}: RTT p50 {_f(h['rtt_p50_us'], 0)} µs with {h['security']} "
                     f"vs {_f(plain['rtt_p50_us'], 0)} µs plaintext ({_x(ratio(h['rtt_p50_us'], plain['rtt_p50_us']))},"
                     f" {h['rtt_p50_us'] - plain['rtt_p50_us']:+.0f} µs)")
    return L + [""] if L else []


def targets_section(rep: BenchReport) -> list[str]:
    if not rep.netns.get("runs") and not rep.wire_dtypes:
        return []
    return ["## Issue 19 targets (this run)", ""] + [f"- {t.sentence()}" for t in report_targets(rep)] + [""]
