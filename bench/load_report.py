"""The load test's report: load.md (``write_markdown``) and load.json (``dump_json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.load_sampling import MIB, cpu_line


def fmt_mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:.1f}"


def fmt_s(v: float | None, scale: float = 1000.0, unit: str = "ms") -> str:
    return "-" if v is None else f"{v * scale:.0f} {unit}"


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    lines = sustained_lines(r) + burst_lines(r) + check_lines(r)
    path.write_text("\n".join(lines) + "\n")


def sustained_lines(r: dict[str, Any]) -> list[str]:
    s = r["sustained"]
    a = r["args"]
    o = s["overall"]
    lines = [
        "# Shardline load test (`python -m bench.load`)", "",
        f"Run {r['started']} on {r['machine']['cpus']} CPU cores (no GPU), loopback only; the load generator shares "
        f"the cores with the cluster. Model `{r['model']}`, KV budget {r['kv_cache_tokens']} tokens per shard. "
        f"Command: `{r['command']}`" + (f" with {r['env']} in the environment" if r.get("env") else "") + ".", "",
        f"Verdict: **{'PASS' if r['passed'] else 'FAIL'}**"
        + ("" if r["passed"] else " - " + "; ".join(c["name"] for c in r["checks"] if not c["ok"])), "",
        f"## Sustained: {a['clients']} concurrent streaming clients, {a['warmup']:.0f} s warm-up + "
        f"{a['duration']:.0f} s measured (max_tokens {a['max_tokens']}, temperature 0 / 0.7)", "",
        f"Whole phase (warm-up, window and the drain of the last streams, {s['wall_s']:.0f} s): {s['requests']} "
        f"requests, {s['ok']} complete, **{s['failures']} failures**, {s['status_429']} x 429 "
        f"({s['deliberate_429']} with Retry-After); {s['streams_200']} streams answered 200, "
        f"{s['streams_with_done']} ended with `data: [DONE]`; finish reasons {s['finish_reasons']}; "
        f"TTFT p50 / p99 {fmt_s(o['ttft_s']['p50'])} / {fmt_s(o['ttft_s']['p99'])}, latency p50 / p99 "
        f"{fmt_s(o['latency_s']['p50'])} / {fmt_s(o['latency_s']['p99'])}, {o['tokens_per_s']} tokens/s.", "",
        f"Measured window ({a['duration']:.0f} s after the warm-up): latencies of the {s['window_started_ok']} "
        f"requests started in it, throughput of the {s['window_ended_ok']} that ended in it:", "",
        "| TTFT p50 / p90 / p99 | latency p50 / p90 / p99 | tokens/s | requests/s |",
        "|---:|---:|---:|---:|",
        f"| {fmt_s(s['ttft_s']['p50'])} / {fmt_s(s['ttft_s']['p90'])} / {fmt_s(s['ttft_s']['p99'])} | "
        f"{fmt_s(s['latency_s']['p50'])} / {fmt_s(s['latency_s']['p90'])} / {fmt_s(s['latency_s']['p99'])} | "
        f"{s['tokens_per_s']} | {s['requests_per_s']} |", "",
    ]
    lines += rss_lines(r)
    lines += [cpu_line(r.get("cpu_sustained", {}), "from the end of the warm-up to the end of the phase"), "",
              peaks_line(r, "sustained"), "", kv_line("after the sustained phase", r["idle_after_sustained"]), ""]
    return lines


def rss_lines(r: dict[str, Any]) -> list[str]:
    a = r["args"]
    lines: list[str] = []
    if r.get("rss_sustained"):
        lines += [
            f"RSS in MiB, sampled every {a['rss_interval']:.0f} s: start = the end of the warm-up, loaded end = the "
            "end of the measured window, drained = 3 s after the cluster went idle. Loaded growth = loaded end - "
            "start, bound max(50 MiB, 10 % of start) + the node's KV budget (caches are allocated as requests "
            "come); drained growth = drained - start, bound max(50 MiB, 10 %) (a leak would stay). CPU seconds "
            "from start to drained; open file descriptors:", "",
            "| process | start | middle | loaded end | drained | max | loaded growth / bound | drained growth / bound "
            "| ok | CPU s | fds start / end / max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|",
        ]
        for name, v in r["rss_sustained"].items():
            lines.append(f"| {name} | {fmt_mib(v['start'])} | {fmt_mib(v['middle'])} | {fmt_mib(v['end_loaded'])} | "
                         f"{fmt_mib(v['end'])} | {fmt_mib(v['max'])} | {v['growth'] / MIB:+.1f} / "
                         f"{fmt_mib(v['bound'])} | {v['drained_growth'] / MIB:+.1f} / {fmt_mib(v['drained_bound'])} | "
                         f"{'yes' if v['ok'] else 'NO'} | {v['cpu_s']} | "
                         f"{v['fds_start']} / {v['fds_end']} / {v['fds_max']} |")
        lines.append("")
    return lines


def burst_lines(r: dict[str, Any]) -> list[str]:
    b, a = r.get("burst"), r["args"]
    if not b:
        return []
    t = b["time_to_429_s"]
    lines = [
        f"## Burst: {b['clients']} clients released at once (max_tokens {a['burst_max_tokens']}, no retry)", "",
        "| admitted (200) | completed | 429 | with Retry-After | time to 429 p50 / p99 / max | failures |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {b['admitted']} | {b['completed']} | {b['rejected_429']} | {b['rejected_429_with_retry_after']} | "
        f"{fmt_s(t['p50'])} / {fmt_s(t['p99'])} / {fmt_s(t['max'])} | {b['failures']} |", "",
        capacity_line(b.get("capacity", {})) +
        f"Time to 429 (release -> response) min {fmt_s(t['min'])}; from the request fully written to the 429 "
        f"p50 / p99 / max {fmt_s(b['sent_to_429_s']['p50'])} / {fmt_s(b['sent_to_429_s']['p99'])} / "
        f"{fmt_s(b['sent_to_429_s']['max'])}; release -> request written (the load generator's own delay) p50 "
        f"/ max {fmt_s(b['release_to_sent_s']['p50'])} / {fmt_s(b['release_to_sent_s']['max'])}. "
        f"Admitted streams: first token from "
        f"{fmt_s(b['admitted_first_token_s']['min'])} to {fmt_s(b['admitted_first_token_s']['max'])} after the "
        f"release, done from {fmt_s(b['admitted_done_s']['min'])} to {fmt_s(b['admitted_done_s']['max'])}; "
        f"TTFT p50 / p99 {fmt_s(b['ttft_s']['p50'])} / {fmt_s(b['ttft_s']['p99'])}, {b['tokens_per_s']} "
        f"tokens/s. Retry-After values: {b['retry_after_values']}. Before the release every client opened its "
        f"connection with a GET /health: {len(b.get('connection_warmup_failures', []))} of those failed.", "",
    ]
    if r.get("rss_burst"):
        lines += ["RSS during the burst, MiB (max / end), and CPU seconds: " + ", ".join(
            f"{n} {fmt_mib(v['max'])} / {fmt_mib(v['end'])}, {v['cpu_s']} s" for n, v in r["rss_burst"].items()),
            ""]
    lines += [cpu_line(r.get("cpu_burst", {}), "during the burst"), "", peaks_line(r, "burst"), "",
              kv_line("after the burst", r["idle_after_burst"]), ""]
    return lines


def check_lines(r: dict[str, Any]) -> list[str]:
    lines = ["## Checks", "", "| check | ok | detail |", "|---|:-:|---|"]
    lines += [f"| {c['name']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in r["checks"]]
    lines += ["", f"Load generator CPU: {r['client_cpu_s']:.0f} s over {r['total_s']:.0f} s; load average "
                  f"before / after: {r['machine']['loadavg_before']} / {r['machine']['loadavg_after']}."]
    if r.get("notes"):
        lines += [""] + [f"Note: {n}" for n in r["notes"]]
    return lines


def capacity_line(cap: dict[str, Any]) -> str:
    if not cap.get("expected"):
        return "Expected admissions: unknown (" + cap.get("why", "?") + "). "
    return (f"Expected admissions about {cap['expected']}: {cap['fit_in_kv']} requests fit in the smallest stage's "
            f"{cap['kv_capacity_tokens']} KV tokens at once ({cap['kv_tokens_per_request']} tokens reserved each: "
            f"prompt + max_tokens) + {cap['max_waiting']} queued (coordinator.max_waiting). ")


def peaks_line(r: dict[str, Any], phase: str) -> str:
    p = r["cluster_peaks"].get(phase)
    if not p:
        return f"/api/cluster was not read during the {phase} phase."
    return (f"Peaks seen in /api/cluster during the phase ({p['polls']} polls): {p['running']} requests running, "
            f"{p['waiting']} waiting, {p['kv_used_tokens']} of {p['kv_capacity_tokens']} KV tokens on one node.")


def kv_state(idle: dict[str, Any]) -> str:
    if "node_info" not in idle:
        return f"could not be read ({idle.get('error')})"
    kv = ", ".join(f"{n} {v.get('kv_used_tokens', '?')} tokens / {v.get('num_sequences', '?')} sequences"
                   if "error" not in v else f"{n} {v['error']}" for n, v in idle["node_info"].items())
    run = ", ".join(f"{m}: {v['running']} running, {v['waiting']} waiting" for m, v in idle["models"].items())
    when = f"idle reached in {idle['waited_s']:.1f} s" if idle["ok"] else f"NOT idle after {idle['waited_s']:.0f} s"
    return f"{when}; node Info RPC: {kv}; /api/cluster: {run}"


def kv_line(when: str, idle: dict[str, Any]) -> str:
    return f"KV {when}: {kv_state(idle)}."


def dump_json(report: dict[str, Any], bulky: tuple[str, ...] = ("requests", "samples")) -> str:
    """Indented JSON, except one line per request / sample row (they are most of the file)."""
    head = json.dumps({k: v for k, v in report.items() if k not in bulky}, indent=2, default=str)
    parts = [head[:-2]]  # without the closing "\n}"
    for key in bulky:
        if key in report:
            rows = ",\n    ".join(json.dumps(x, separators=(",", ":"), default=str) for x in report[key])
            parts.append(f',\n  "{key}": [\n    {rows}\n  ]')
    return "".join(parts) + "\n}\n"
