"""latest.md's speculative-decoding section (issue 20) and its summary in latest.json, from ``rep.speculative``
(bench/speculative.py records it): the class table off vs on, the per-prompt table, the transformers baseline, the
output comparison and the issue's targets in words. No I/O."""

from __future__ import annotations

from typing import Any

from bench.report import BenchReport, _f, _x
from bench.spec_stats import (
    CellFigures,
    CellPair,
    StreamTrace,
    cell_pairs,
    class_tps,
    output_differences,
    prompt_speedup_geomeans,
)
from bench.spec_targets import IdentityCheck, check_targets
from bench.spec_workload import COPY
from bench.targets import TargetCheck


def streams(sec: dict[str, Any]) -> list[StreamTrace]:
    return [StreamTrace.from_json(d) for d in sec.get("streams", [])]


def hf_streams(sec: dict[str, Any]) -> list[StreamTrace]:
    """The transformers baseline's streams (speculation off, one stream, no link)."""
    return [StreamTrace(s["prompt"], s["kind"], False, 0.0, 1, i, s["t_release"], s["token_times"], s["token_ids"])
            for i, s in enumerate(sec.get("transformers", {}).get("streams", []))]


def spec_targets(sec: dict[str, Any]) -> tuple[list[TargetCheck], IdentityCheck]:
    traces = streams(sec)
    hf_copy = class_tps(t for t in hf_streams(sec) if t.kind == COPY)
    compared, diffs = output_differences(traces)
    return check_targets(cell_pairs(traces), hf_copy), IdentityCheck(compared, tuple(diffs))


def summary_json(sec: dict[str, Any]) -> dict[str, Any]:
    """The section's derived figures for latest.json: cells off / on with ratios, differences, targets."""
    traces = streams(sec)
    targets, identity = spec_targets(sec)
    cells = [{"kind": p.key.kind, "delay_ms": p.key.delay_ms, "concurrency": p.key.concurrency,
              "off": p.off.__dict__ if p.off else None, "on": p.on.__dict__ if p.on else None,
              "on_over_off": {f: p.speedup(f) for f in ("tps_per_stream", "decode_tps", "aggregate_tps")}}
             for p in cell_pairs(traces)]
    checks: list[dict[str, Any]] = [{"name": t.name, "target": t.target, "ratio": t.ratio, "met": t.met,
                                     "detail": t.detail, "sentence": t.sentence()} for t in targets]
    checks.append({"name": "greedy identical off vs on", "met": identity.met, "sentence": identity.sentence(),
                   "compared": identity.compared, "differences": [d.__dict__ for d in identity.differences]})
    means = [{"kind": k, "delay_ms": d, "on_over_off": x} for (k, d), x in prompt_speedup_geomeans(traces).items()]
    return {"cells": cells, "prompt_geomeans": means, "targets": checks}


def _pair(off: float | None, on: float | None) -> str:
    return f"{_f(off)} → {_f(on)}"


def _get(fig: CellFigures | None, name: str) -> float | None:
    return getattr(fig, name) if fig else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _other(p: CellPair) -> str:
    return f"{_f(_get(p.off, 'other_cores'), 2)} / {_f(_get(p.on, 'other_cores'), 2)}"


def class_table(pairs: list[CellPair]) -> list[str]:
    L = ["| prompts | link each way | c | tok/s per stream, off → on | on / off | decode tok/s, off → on | on / off | "
         "aggregate tok/s, off → on | on / off | acceptance | tokens per verify step | tokens per decode step, on | "
         "errors | other CPU off / on (cores) |", "|---|---|---:|" + "---:|" * 11]
    for p in pairs:
        off, on = p.off, p.on
        errors = len((off.errors if off else []) + (on.errors if on else []))
        L.append(f"| {p.key.kind} | {p.key.delay_ms:g} ms | {p.key.concurrency} | "
                 f"{_pair(_get(off, 'tps_per_stream'), _get(on, 'tps_per_stream'))} | "
                 f"**{_x(p.speedup('tps_per_stream'))}** | {_pair(_get(off, 'decode_tps'), _get(on, 'decode_tps'))} | "
                 f"{_x(p.speedup('decode_tps'))} | {_pair(_get(off, 'aggregate_tps'), _get(on, 'aggregate_tps'))} | "
                 f"{_x(p.speedup('aggregate_tps'))} | {_pct(_get(on, 'acceptance'))} | "
                 f"{_f(_get(on, 'tokens_per_verify_step'), 2)} | {_f(_get(on, 'tokens_per_step'), 2)} | "
                 f"{errors or '0'} | {_other(p)} |")
    return L


def prompt_table(traces: list[StreamTrace]) -> list[str]:
    one = [t for t in traces if t.concurrency == 1]
    finish = {t.prompt: f"{t.n_tokens} ({t.finish_reason or t.error})" for t in one if not t.speculative}
    L = ["| prompt | link each way | tokens (finish), off | tok/s per stream, off → on | on / off | acceptance | "
         "tokens per verify step | other CPU off / on (cores) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in cell_pairs(one, by_prompt=True):
        L.append(f"| {p.key.kind} | {p.key.delay_ms:g} ms | {finish.get(p.key.kind, '–')} | "
                 f"{_pair(_get(p.off, 'tps_per_stream'), _get(p.on, 'tps_per_stream'))} | "
                 f"{_x(p.speedup('tps_per_stream'))} | {_pct(_get(p.on, 'acceptance'))} | "
                 f"{_f(_get(p.on, 'tokens_per_verify_step'), 2)} | {_other(p)} |")
    return L


def geomean_lines(traces: list[StreamTrace]) -> list[str]:
    means = prompt_speedup_geomeans(traces)
    if not means:
        return []
    return ["Geometric mean of the per-prompt on / off above (each prompt weighs the same; the class rows weigh them "
            "by their time): " + "; ".join(f"{kind} {delay:g} ms {_x(x)}" for (kind, delay), x in means.items())
            + ".", ""]


def hf_table(sec: dict[str, Any], traces: list[StreamTrace]) -> list[str]:
    hf = hf_streams(sec)
    if not hf:
        why = sec.get("transformers_error", "not run")
        return [f"Monolithic transformers: no figures ({why}).", ""]
    on = {t.prompt: t for t in traces if t.speculative and t.concurrency == 1 and t.delay_ms == 0}
    info = sec["transformers"]
    L = [f"Monolithic transformers {info.get('transformers')} (torch {info.get('torch')}, {info.get('threads')} "
         "threads, float32, greedy, plain decoding, one stream, before the cluster started; other processes used "
         f"{_f(info.get('other_cores_avg'), 2)} cores meanwhile) on the copy-heavy prompts:", "",
         "| prompt | tokens | transformers tok/s | Shardline on, 0 ms, tok/s | "
         "Shardline / transformers | same tokens |", "|---|---:|---:|---:|---:|:---:|"]
    for t in hf:
        s = on.get(t.prompt)
        mine = class_tps([s]) if s else None
        same = "–" if s is None else ("yes" if s.token_ids == t.token_ids else "no")
        L.append(f"| {t.prompt} | {t.n_tokens} | {_f(class_tps([t]))} | {_f(mine)} | "
                 f"{_x(None if mine is None else mine / (class_tps([t]) or float('nan')))} | {same} |")
    return L + [""]


def _acceptance(label: str, extra: dict[str, Any]) -> str | None:
    proposed, accepted = extra.get("draft_proposed"), extra.get("draft_accepted", 0)
    if proposed is None:
        return None
    share = "–" if not proposed else f"{accepted / proposed:.0%}"
    return f"{label} {share} ({accepted} of {proposed})"


def other_rows_acceptance(rep: BenchReport) -> list[str]:
    """Acceptance in the run's other Shardline rows (ignore_eos, fixed N, speculation as the model has it)."""
    parts = [_acceptance(f"{r.system} {r.prompt} c = {r.concurrency}", r.extra) for r in rep.runs]
    parts += [_acceptance(f"latency table {r['system']} {r['prompt']} c = {r['concurrency']}", r.get("extra", {}))
              for r in rep.netns.get("runs", [])]
    shown = [p for p in parts if p]
    if not shown:
        return []
    return ["Draft acceptance in this run's other Shardline rows (the model's default, speculation on; greedy, EOS "
            "ignored, exactly N tokens): " + "; ".join(shown) + ".", ""]


def _setup_lines(sec: dict[str, Any]) -> list[str]:
    plan, model = sec.get("plan", {}), sec.get("speculation", {})
    prompts = ", ".join(f"{p['name']} ({p['kind']}, {p['num_tokens']} tokens)" for p in sec.get("prompts", []))
    return [sec.get("where", ""), "",
            f"Model config: `speculative` {model.get('speculative', '?')}, `num_speculative_tokens` "
            f"{model.get('num_speculative_tokens', '?')}; float32 weights. Off = the same cluster with "
            "`no_speculation` per request. Prompts, chat-templated, greedy, ending at EOS (cap "
            f"{plan.get('max_tokens')} new tokens): {prompts}. At c = 1 every prompt runs "
            f"{plan.get('requests')} time(s) per mode, off and on alternating request by request (who goes first "
            "alternates); at c = 8 a round holds the class's prompts cycled to 8 streams, released together, one "
            "round per mode, alternating likewise. Tok/s per stream = tokens / (last token − release), summed over "
            "the class's streams (the same tokens off and on, so on / off is the time saved); decode tok/s counts "
            "after the first token; aggregate = tokens / (last token − release) of each round. Acceptance = "
            "accepted / proposed drafts; tokens per verify step = tokens out of the steps that verified drafts; "
            "tokens per decode step counts every step after the first (plain ones too). Other CPU: the most that "
            "processes outside the bench used during one of the cell's rounds, in cores of this machine (anything but "
            "~0 disturbs that figure).", ""]


def speculative_section(rep: BenchReport) -> list[str]:
    sec = rep.speculative
    if not sec.get("plan"):
        other = other_rows_acceptance(rep)
        return ["## Speculative decoding (issue 20)", "", *other] if other else []
    traces = streams(sec)
    targets, identity = spec_targets(sec)
    L = ["## Speculative decoding (issue 20): n-gram drafts off vs on", ""] + _setup_lines(sec)
    L += ["Issue 20 targets (this run):", ""] + [f"- {t.sentence()}" for t in targets]
    L += [f"- {identity.sentence()}", ""]
    L += class_table(cell_pairs(traces)) + ["", "Per prompt, one stream:", ""]
    L += prompt_table(traces) + [""] + geomean_lines(traces) + hf_table(sec, traces)
    if sec.get("network_note"):
        L += [str(sec["network_note"]), ""]
    return L + other_rows_acceptance(rep)
