"""Issue 19's targets against one bench run (no I/O, no timing): each with what it compares, the measured ratio,
whether it is met (None: not measured in this run) and a sentence that says so in words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.latency_report import TableRow, find_row, ratio

LOOPBACK_MS, NEAR_MS, FAR_MS = 0.0, 5.0, 25.0
TOP_C = 32


@dataclass(frozen=True)
class TargetCheck:
    name: str
    target: str  # the bound, in words
    ratio: float | None  # measured
    bound: float
    at_least: bool  # ratio >= bound (else ratio <= bound)
    detail: str  # the figures behind the ratio, or why it was not measured

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= self.bound if self.at_least else self.ratio <= self.bound

    def sentence(self) -> str:
        if self.met is None:
            return f"{self.name} (target {self.target}): not measured — {self.detail}"
        verdict = "met" if self.met else f"MISSED by {abs(self.ratio - self.bound) / self.bound:.0%}"  # type: ignore[operator]
        return f"{self.name} (target {self.target}): {self.ratio:.2f}× — {verdict}; {self.detail}"


def _f(x: float | None, unit: str) -> str:
    return "–" if x is None else f"{x:.1f} {unit}"


def _missing(*parts: tuple[str, TableRow | None]) -> str:
    return ", ".join(f"no {name} row" for name, row in parts if row is None)


def _steps(row: TableRow | None) -> float | None:
    return row.steps_per_s if row else None


def one_stream_near(rows: Sequence[TableRow]) -> TargetCheck:
    near, zero = _steps(find_row(rows, NEAR_MS, "direct")), _steps(find_row(rows, LOOPBACK_MS, "direct"))
    star = ratio(_steps(find_row(rows, NEAR_MS, "star")), _steps(find_row(rows, LOOPBACK_MS, "star")))
    detail = _missing(("5 ms direct", find_row(rows, NEAR_MS, "direct")),
                      ("0 ms direct", find_row(rows, LOOPBACK_MS, "direct"))) or (
        f"direct {_f(near, 'steps/s')} at 5 ms vs {_f(zero, 'steps/s')} at 0 ms"
        + ("" if star is None else f" (star relay: {star:.2f}×)"))
    return TargetCheck("5 ms each way, one stream vs 0 ms", "≥ 0.90×", ratio(near, zero), 0.9, True, detail)


def direct_over_star_far(rows: Sequence[TableRow]) -> TargetCheck:
    direct_row, star_row = find_row(rows, FAR_MS, "direct"), find_row(rows, FAR_MS, "star")
    direct, star = _steps(direct_row), _steps(star_row)
    detail = _missing(("25 ms direct", direct_row), ("25 ms star", star_row)) or (
        f"one stream at 25 ms: direct {_f(direct, 'steps/s')} vs star {_f(star, 'steps/s')}")
    return TargetCheck("25 ms each way, direct vs star relay", "≥ 1.50×", ratio(direct, star), 1.5, True, detail)


def aggregate_near(rows: Sequence[TableRow], c: int = TOP_C) -> TargetCheck:
    near, zero = find_row(rows, NEAR_MS, "direct"), find_row(rows, LOOPBACK_MS, "direct")
    a, b = (near.aggregate_tps.get(c) if near else None), (zero.aggregate_tps.get(c) if zero else None)
    detail = _missing(("5 ms direct", near), ("0 ms direct", zero)) or (
        f"direct, {c} streams: {_f(a, 'tok/s')} at 5 ms vs {_f(b, 'tok/s')} at 0 ms")
    return TargetCheck(f"5 ms each way, {c} streams vs 0 ms aggregate", "≥ 0.90×", ratio(a, b), 0.9, True, detail)


def ttft_vs_transformers(rows: Sequence[TableRow], hf_ttft_ms: float | None) -> TargetCheck:
    zero = find_row(rows, LOOPBACK_MS, "direct")
    mine = zero.ttft_long_ms if zero else None
    if hf_ttft_ms is None:
        detail = (f"Shardline direct at 0 ms: {_f(mine, 'ms')}; transformers did not run in this bench run "
                  f"(its long-prompt c=1 row is the baseline), so there is no same-run ratio")
    else:
        detail = f"Shardline direct at 0 ms {_f(mine, 'ms')} vs monolithic transformers {_f(hf_ttft_ms, 'ms')}"
    return TargetCheck("500-token prompt TTFT at 0 ms vs transformers", "≤ 1.20×", ratio(mine, hf_ttft_ms), 1.2,
                       False, detail)


def cheapest_identical(rows: Sequence[dict[str, Any]]) -> str | None:
    """The wire dtype with the fewest bytes per token among those whose outputs all equal float32's."""
    same = [r for r in rows if r["identical_share"] == 1.0]
    return str(min(same, key=lambda r: float(r["bytes_per_token"]))["wire_dtype"]) if same else None


def compressed_wire(wire_rows: Sequence[dict[str, Any]]) -> TargetCheck:
    """The cheapest wire dtype whose greedy output equals float32's on every prompt: its bytes vs float32's."""
    same = [r for r in wire_rows if r["identical_share"] == 1.0 and r["wire_dtype"] != "float32"]
    if not wire_rows:
        return TargetCheck("compressed activations, bytes per token vs float32", "≤ 0.50× with identical greedy "
                           "output", None, 0.5, False, "the wire-dtype part did not run")
    if not same:
        return TargetCheck("compressed activations, bytes per token vs float32", "≤ 0.50× with identical greedy "
                           "output", 1.0, 0.5, False, "no compressed wire dtype kept every greedy output identical")
    best = min(same, key=lambda r: r["bytes_per_token"])
    return TargetCheck("compressed activations, bytes per token vs float32", "≤ 0.50× with identical greedy output",
                       best["bytes_share_of_float32"], 0.5, False,
                       f"{best['wire_dtype']}: {best['bytes_per_token']:.0f} bytes per token per link, identical "
                       f"output on all {best['prompts']} prompts")


def check_targets(rows: Sequence[TableRow], hf_ttft_ms: float | None,
                  wire_rows: Sequence[dict[str, Any]]) -> list[TargetCheck]:
    return [one_stream_near(rows), direct_over_star_far(rows), aggregate_near(rows),
            ttft_vs_transformers(rows, hf_ttft_ms), compressed_wire(wire_rows)]
