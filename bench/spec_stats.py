"""The speculative-decoding section's figures from its recorded streams (no I/O, no timing): per cell (prompt class,
link delay, concurrency, speculation off / on) tokens/s of one stream, decode tokens/s, aggregate tokens/s,
acceptance and tokens per verify step; the on / off ratios; and whether greedy output was identical off and on."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import ratio


@dataclass
class StreamTrace:
    """One Generate stream as its client saw it (times: ``time.perf_counter()`` seconds)."""

    prompt: str  # spec_workload prompt name
    kind: str  # its class
    speculative: bool  # False: sent with no_speculation
    delay_ms: float  # each way
    concurrency: int
    round: int  # streams of one round were released together
    t_release: float
    token_times: list[float] = field(default_factory=list)  # one per token (a message's tokens share it)
    token_ids: list[int] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)  # tokens per message that carried any (one per step)
    step_drafts: list[int] = field(default_factory=list)  # drafts proposed for that step (delta of draft_proposed)
    proposed: int = 0  # the request's draft_proposed at the end
    accepted: int = 0
    finish_reason: str = ""
    error: str = ""
    other_cores: float = 0.0  # CPU that processes outside the bench used during its round, in cores

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seconds(self) -> float:
        """Release to the last token (0 without tokens)."""
        return self.token_times[-1] - self.t_release if self.token_times else 0.0

    @property
    def decode_seconds(self) -> float:
        return self.token_times[-1] - self.token_times[0] if self.token_times else 0.0

    def to_json(self) -> dict[str, Any]:
        """Compact for latest.json: times as ms after the release, one per message, lists as spaced strings."""
        d = asdict(self)
        starts = [sum(self.step_tokens[:k]) for k in range(len(self.step_tokens))]
        d["step_ms"] = " ".join(f"{(self.token_times[i] - self.t_release) * 1e3:.2f}" for i in starts)
        for name in ("token_ids", "step_tokens", "step_drafts"):
            d[name] = " ".join(str(x) for x in d[name])
        del d["token_times"]
        d["t_release"] = 0.0
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamTrace:
        """Back from ``to_json`` (or from plain ``asdict``)."""
        if "token_times" in d:
            return cls(**d)
        ints: dict[str, Any] = {k: [int(x) for x in str(d[k]).split()] for k in ("token_ids", "step_tokens",
                                                                                   "step_drafts")}
        ints["token_times"] = [float(ms) / 1e3 for ms, n in zip(str(d["step_ms"]).split(), ints["step_tokens"])
                               for _ in range(n)]
        return cls(**{k: v for k, v in d.items() if k not in ("step_ms", *ints)}, **ints)


@dataclass(frozen=True)
class CellKey:
    kind: str
    delay_ms: float
    concurrency: int


@dataclass
class CellFigures:
    """One cell with speculation off or on."""

    kind: str
    delay_ms: float
    concurrency: int
    speculative: bool
    streams: int
    tokens: int
    tps_per_stream: float | None  # sum of tokens / sum of (last token - release): one stream's tokens/s
    decode_tps: float | None  # sum of (tokens - 1) / sum of (last - first token)
    aggregate_tps: float | None  # tokens / sum over rounds of (last token - release)
    acceptance: float | None  # accepted / proposed drafts
    tokens_per_verify_step: float | None  # tokens out of steps that verified drafts, per such step
    tokens_per_step: float | None  # decode tokens (after the first) per decode step
    other_cores: float = 0.0  # the most any of its rounds saw processes outside the bench use, in cores
    errors: list[str] = field(default_factory=list)


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _aggregate(traces: Sequence[StreamTrace]) -> float | None:
    rounds: dict[int, list[StreamTrace]] = {}
    for t in traces:
        rounds.setdefault(t.round, []).append(t)
    wall = 0.0
    for members in rounds.values():
        ends = [t.token_times[-1] for t in members if t.token_times]
        wall += max(ends) - min(t.t_release for t in members) if ends else 0.0
    return _div(sum(t.n_tokens for t in traces), wall)


def figures(traces: Sequence[StreamTrace]) -> CellFigures:
    """A cell's figures from its streams (all of one kind, delay, concurrency and mode)."""
    first = traces[0]
    verify = [(n, d) for t in traces for n, d in zip(t.step_tokens, t.step_drafts) if d > 0]
    decode_steps = sum(max(len(t.step_tokens) - 1, 0) for t in traces)
    return CellFigures(
        kind=first.kind, delay_ms=first.delay_ms, concurrency=first.concurrency, speculative=first.speculative,
        streams=len(traces), tokens=sum(t.n_tokens for t in traces),
        tps_per_stream=_div(sum(t.n_tokens for t in traces), sum(t.seconds for t in traces)),
        decode_tps=_div(sum(max(t.n_tokens - 1, 0) for t in traces), sum(t.decode_seconds for t in traces)),
        aggregate_tps=_aggregate(traces),
        acceptance=_div(sum(t.accepted for t in traces), sum(t.proposed for t in traces)),
        tokens_per_verify_step=_div(sum(n for n, _ in verify), len(verify)),
        tokens_per_step=_div(sum(max(t.n_tokens - 1, 0) for t in traces), decode_steps),
        other_cores=max(t.other_cores for t in traces),
        errors=[f"{t.prompt}: {t.error}" for t in traces if t.error][:5])


@dataclass
class CellPair:
    """One cell off and on, with the on / off ratios."""

    key: CellKey
    off: CellFigures | None
    on: CellFigures | None

    def speedup(self, name: str) -> float | None:
        """on / off of one figure (tps_per_stream, decode_tps, aggregate_tps)."""
        if self.off is None or self.on is None:
            return None
        return ratio(getattr(self.on, name), getattr(self.off, name))


def _group(traces: Iterable[StreamTrace]) -> dict[tuple[CellKey, bool], list[StreamTrace]]:
    out: dict[tuple[CellKey, bool], list[StreamTrace]] = {}
    for t in traces:
        out.setdefault((CellKey(t.kind, t.delay_ms, t.concurrency), t.speculative), []).append(t)
    return out


def cell_pairs(traces: Iterable[StreamTrace], by_prompt: bool = False) -> list[CellPair]:
    """Every cell off and on, sorted by class, delay, concurrency (``by_prompt``: one cell per prompt instead of
    per class, its name in ``key.kind``)."""
    rows = [StreamTrace(**{**asdict(t), "kind": t.prompt}) for t in traces] if by_prompt else list(traces)
    groups = _group(rows)
    keys = sorted({k for k, _ in groups}, key=lambda k: (k.kind, k.delay_ms, k.concurrency))
    return [CellPair(k, *(figures(groups[(k, s)]) if (k, s) in groups else None for s in (False, True)))
            for k in keys]


def find_pair(pairs: Sequence[CellPair], kind: str, delay_ms: float, concurrency: int) -> CellPair | None:
    return next((p for p in pairs if p.key == CellKey(kind, delay_ms, concurrency)), None)


@dataclass(frozen=True)
class OutputDifference:
    prompt: str
    delay_ms: float
    concurrency: int
    first_difference: int  # index of the first token that differs
    tokens_off: int
    tokens_on: int


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def output_differences(traces: Iterable[StreamTrace]) -> tuple[int, list[OutputDifference]]:
    """How many (prompt, delay, concurrency) outputs were compared off vs on, and those that differ (every stream of
    a prompt in a cell against the first stream with speculation off; errored streams count as different)."""
    cells: dict[tuple[str, float, int], dict[bool, list[StreamTrace]]] = {}
    for t in traces:
        cells.setdefault((t.prompt, t.delay_ms, t.concurrency), {}).setdefault(t.speculative, []).append(t)
    compared, diffs = 0, []
    for (prompt, delay, c), modes in sorted(cells.items()):
        if False not in modes or True not in modes:
            continue
        compared += 1
        ref = modes[False][0]
        for t in modes[False][1:] + modes[True]:
            if t.token_ids != ref.token_ids or t.error or ref.error:
                diffs.append(OutputDifference(prompt, delay, c, _first_difference(ref.token_ids, t.token_ids),
                                              ref.n_tokens, t.n_tokens))
                break
    return compared, diffs


def class_tps(traces: Iterable[StreamTrace]) -> float | None:
    """Sum of tokens / sum of (last token - release) (the transformers baseline's streams)."""
    ts = list(traces)
    return _div(sum(t.n_tokens for t in ts), sum(t.seconds for t in ts))


def prompt_speedup_geomeans(traces: Iterable[StreamTrace]) -> dict[tuple[str, float], float]:
    """(class, delay) -> the geometric mean over the class's prompts of one stream's on / off (c = 1): each prompt
    weighs the same, where the class figure weighs them by their time."""
    ones = [t for t in traces if t.concurrency == 1]
    kind_of = {t.prompt: t.kind for t in ones}
    ratios: dict[tuple[str, float], list[float]] = {}
    for p in cell_pairs(ones, by_prompt=True):
        x = p.speedup("tps_per_stream")
        if x:
            ratios.setdefault((kind_of[p.key.kind], p.key.delay_ms), []).append(x)
    return {k: math.exp(sum(math.log(x) for x in v) / len(v)) for k, v in sorted(ratios.items())}
