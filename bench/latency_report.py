"""The latency table and issue 19's targets, from the runs bench/latency_table.py and bench/wire_dtypes.py
recorded (no I/O, no timing): table rows in the shape of the Petals paper's table, the delay checks, and each
target checked in words with its measured ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SINGLE_STREAM_PROMPT, TTFT_PROMPT = "short", "long"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


@dataclass(frozen=True)
class TableRow:
    """One link delay x relay."""

    delay_ms: float  # each way
    forwarding: str  # "star" | "direct"
    steps_per_s: float | None = None  # one stream: decode steps/s, (N - 1) / (last - first token), median request
    tokens_per_s: float | None = None  # one stream end to end: N / (last token - release), TTFT included
    aggregate_tps: dict[int, float | None] = field(default_factory=dict)  # c streams at once -> tokens/s
    ttft_long_ms: float | None = None  # p50 TTFT of the long prompt, one stream
    long_prompt_tokens: int | None = None
    exact: bool = True  # every request got exactly its tokens, no error
    other_cores: float | None = None  # the most CPU other processes used during one of its measurements, in cores

    @property
    def prefill_tps(self) -> float | None:
        """Prompt tokens per second of the long prompt's first token (Petals' "forward" column)."""
        if self.ttft_long_ms and self.long_prompt_tokens:
            return self.long_prompt_tokens / (self.ttft_long_ms / 1e3)
        return None


def table_rows(runs: Sequence[dict[str, Any]], prompt_tokens: dict[str, int] | None = None) -> list[TableRow]:
    """Rows in measuring order of (delay, relay) from the runs' dicts (RunResult fields + delay_ms, forwarding)."""
    keys = list(dict.fromkeys((float(r["delay_ms"]), str(r["forwarding"])) for r in runs))
    rows = []
    for delay, mode in sorted(keys, key=lambda k: (k[0], k[1] != "star")):
        mine = [r for r in runs if float(r["delay_ms"]) == delay and r["forwarding"] == mode]
        single = next((r for r in mine if r["prompt"] == SINGLE_STREAM_PROMPT and r["concurrency"] == 1), None)
        long = next((r for r in mine if r["prompt"] == TTFT_PROMPT and r["concurrency"] == 1), None)
        rows.append(TableRow(
            delay, mode, _num(single and single["decode_tps_per_stream_p50"]),
            _num(single and single["aggregate_tps"]),
            {int(r["concurrency"]): _num(r["aggregate_tps"]) for r in mine
             if r["prompt"] == SINGLE_STREAM_PROMPT and r["concurrency"] > 1},
            _num(long and long["ttft_p50_ms"]), (prompt_tokens or {}).get(TTFT_PROMPT),
            all(r["all_counts_exact"] for r in mine),
            max((r["other_cores_avg"] for r in mine if r.get("other_cores_avg") is not None), default=None)))
    return rows


def find_row(rows: Sequence[TableRow], delay_ms: float, forwarding: str) -> TableRow | None:
    return next((r for r in rows if r.delay_ms == delay_ms and r.forwarding == forwarding), None)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def added_per_step(rows: Sequence[TableRow]) -> dict[tuple[float, str], tuple[float, float]]:
    """Per non-zero delay and relay: ms a single-stream decode step takes beyond the same relay's at 0 ms, and that
    in one-way delays (direct forwarding with 3 stages should cost 4 = K + 1, the star relay 6 = 2K)."""
    out: dict[tuple[float, str], tuple[float, float]] = {}
    for r in rows:
        zero = find_row(rows, 0.0, r.forwarding)
        if r.delay_ms <= 0 or zero is None or not r.steps_per_s or not zero.steps_per_s:
            continue
        added_ms = 1e3 / r.steps_per_s - 1e3 / zero.steps_per_s
        out[(r.delay_ms, r.forwarding)] = (added_ms, added_ms / r.delay_ms)
    return out


def outputs_identical(runs: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """Per prompt: did every delay and relay give the same first greedy tokens (c = 1)?"""
    out: dict[str, bool] = {}
    for prompt in sorted({r["prompt"] for r in runs}):
        firsts = {tuple(r["extra"].get("first_tokens", [])) for r in runs if r["prompt"] == prompt
                  and r["concurrency"] == 1}
        out[prompt] = len(firsts) == 1
    return out


def delay_multiplicity(checks: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per delay and path: how many times each direction waits, (RTT - RTT at 0 ms) / (2 x delay); 1 = once."""
    base = checks.get("0", {})
    out: dict[str, dict[str, float | None]] = {}
    for delay, paths in checks.items():
        d = float(delay)
        if d <= 0:
            continue
        out[delay] = {}
        for path, figures in paths.items():
            rtt = _num(figures.get("tcp_rtt_p50_ms"))
            zero = _num(base.get(path, {}).get("tcp_rtt_p50_ms")) or 0.0
            out[delay][path] = None if rtt is None else (rtt - zero) / (2 * d)
    return out
