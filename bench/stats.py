"""Per-request traces in, latency / throughput figures out. No I/O, no processes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestTrace:
    """One request as its client saw it. Times are ``time.perf_counter()`` seconds of the measuring process."""

    t_release: float  # when the request (or its whole round) was released
    token_times: list[float]  # one timestamp per generated token (tokens of one message share it)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    error: str = ""
    draft_proposed: int = 0  # speculative decoding: the request's draft tokens sent for verification ...
    draft_accepted: int = 0  # ... and accepted (Shardline only)

    @property
    def n_tokens(self) -> int:
        return len(self.token_times)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestTrace:
        return cls(t_release=d["t_release"], token_times=list(d["token_times"]), token_ids=list(d.get("token_ids", [])),
                   finish_reason=d.get("finish_reason", ""), error=d.get("error", ""),
                   draft_proposed=d.get("draft_proposed", 0), draft_accepted=d.get("draft_accepted", 0))


@dataclass
class Round:
    """Requests released together (one request for sequential runs)."""

    traces: list[RequestTrace]

    @property
    def wall_s(self) -> float:
        ends = [t.token_times[-1] for t in self.traces if t.token_times]
        if not ends:
            return 0.0
        return max(ends) - min(t.t_release for t in self.traces)


def draft_totals(rounds: list[Round]) -> dict[str, int]:
    """Speculative decoding over every request of the rounds: drafts proposed and accepted."""
    traces = [t for r in rounds for t in r.traces]
    return {"draft_proposed": sum(t.draft_proposed for t in traces),
            "draft_accepted": sum(t.draft_accepted for t in traces)}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class RunResult:
    """One system x prompt kind x concurrency."""

    system: str
    prompt: str
    concurrency: int
    mode: str  # "sequential", "concurrent streams", "one batch"
    requests: int
    tokens_expected: int  # per request
    tokens_generated: int  # in total
    all_counts_exact: bool
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    decode_tps_per_stream_mean: float  # (n-1) / (last token - first token), mean over streams
    decode_tps_per_stream_p50: float
    aggregate_tps: float  # tokens / sum over rounds of (last token - release)
    wall_s: float
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(system: str, prompt: str, concurrency: int, mode: str, rounds: list[Round], tokens_expected: int,
              extra: dict[str, Any] | None = None) -> RunResult:
    traces = [t for r in rounds for t in r.traces]
    ttft = [(t.token_times[0] - t.t_release) * 1e3 for t in traces if t.token_times]
    itl: list[float] = []
    per_stream: list[float] = []
    for t in traces:
        tt = t.token_times
        itl.extend((b - a) * 1e3 for a, b in zip(tt, tt[1:]))
        if len(tt) > 1 and tt[-1] > tt[0]:
            per_stream.append((len(tt) - 1) / (tt[-1] - tt[0]))
    total = sum(t.n_tokens for t in traces)
    wall = sum(r.wall_s for r in rounds)
    errors = [t.error for t in traces if t.error]
    return RunResult(
        system=system, prompt=prompt, concurrency=concurrency, mode=mode, requests=len(traces),
        tokens_expected=tokens_expected, tokens_generated=total,
        all_counts_exact=all(t.n_tokens == tokens_expected for t in traces) and not errors,
        ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
        itl_p50_ms=percentile(itl, 50), itl_p99_ms=percentile(itl, 99),
        decode_tps_per_stream_mean=sum(per_stream) / len(per_stream) if per_stream else math.nan,
        decode_tps_per_stream_p50=percentile(per_stream, 50),
        aggregate_tps=total / wall if wall > 0 else math.nan, wall_s=wall, errors=errors[:5],
        extra=extra or {},
    )


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b
