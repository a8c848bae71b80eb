"""The speculative-decoding section without a cluster: figures from recorded streams, off / on ratios, the output
comparison, issue 20's targets in words, the round plan, the report section and the flag. No timing."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bench.options import parse_args
from bench.report import BenchReport, load_report, write_json
from bench.report_md import write_markdown
from bench.spec_md import speculative_section, summary_json
from bench.spec_stats import (
    StreamTrace,
    cell_pairs,
    figures,
    find_pair,
    output_differences,
    prompt_speedup_geomeans,
)
from bench.spec_targets import IdentityCheck, check_targets
from bench.spec_workload import COPY, OPEN, PROMPT_TEXTS, SpecPrompt
from bench.speculative import SpecPlan, cycled, modes, round_plan
from bench.stats import RequestTrace, Round, summarize

IDS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 2]


def _trace(prompt: str, kind: str, speculative: bool, delay: float = 0.0, c: int = 1, rnd: int = 0,
           step_s: float = 0.1, steps: list[int] | None = None, drafts: list[int] | None = None,
           accepted: int = 0, ids: list[int] | None = None, release: float = 0.0) -> StreamTrace:
    """A stream whose k-th message (``steps[k]`` tokens) arrives (k + 1) * step_s after the release."""
    ids = list(IDS if ids is None else ids)
    steps = steps or [1] * len(ids)
    times = [release + (k + 1) * step_s for k, n in enumerate(steps) for _ in range(n)]
    drafts = drafts or [0] * len(steps)
    return StreamTrace(prompt, kind, speculative, delay, c, rnd, release, times, ids, steps, drafts, sum(drafts),
                       accepted, "eos")


def _pair_traces(kind: str, prompt: str, delay: float, off_step: float, on_step: float) -> list[StreamTrace]:
    """Off: 10 one-token steps; on: first token, then 3 verify steps of 3 tokens (4 drafts each, 2 accepted)."""
    return [_trace(prompt, kind, False, delay, step_s=off_step),
            _trace(prompt, kind, True, delay, step_s=on_step, steps=[1, 3, 3, 3], drafts=[0, 4, 4, 4], accepted=6)]


def test_figures_of_one_stream_off_and_on() -> None:
    off = figures([_trace("p", COPY, False)])
    assert off.tokens == 10 and abs(off.tps_per_stream - 10.0) < 1e-9  # type: ignore[operator]
    assert abs(off.decode_tps - 10.0) < 1e-9  # type: ignore[operator]  # 9 tokens in 0.9 s
    assert off.acceptance is None and off.tokens_per_verify_step is None and off.tokens_per_step == 1.0
    on = figures(_pair_traces(COPY, "p", 0.0, 0.1, 0.1)[1:])
    assert abs(on.tps_per_stream - 10 / 0.4) < 1e-9  # type: ignore[operator]
    assert on.acceptance == 0.5 and on.tokens_per_verify_step == 3.0 and on.tokens_per_step == 3.0


def test_streams_round_trip_through_their_compact_json() -> None:
    t = _trace("p", COPY, True, steps=[1, 3, 3, 3], drafts=[0, 4, 4, 4], accepted=6, release=5.0)
    t.other_cores = 0.25
    d = t.to_json()
    assert d["token_ids"] == " ".join(map(str, IDS)) and d["step_ms"] == "100.00 200.00 300.00 400.00"
    back = StreamTrace.from_json(d)
    assert back.token_ids == IDS and back.step_drafts == [0, 4, 4, 4] and back.other_cores == 0.25
    assert abs(figures([back]).tps_per_stream - figures([t]).tps_per_stream) < 1e-6  # type: ignore[operator]
    assert figures([back]).tokens_per_verify_step == 3.0 and StreamTrace.from_json(asdict(t)) == t


def test_aggregate_counts_each_round_from_its_release_to_its_last_token() -> None:
    a = [_trace("p", COPY, True, c=2, rnd=0), _trace("q", COPY, True, c=2, rnd=0, step_s=0.2)]
    b = [_trace("p", COPY, True, c=2, rnd=1, release=100.0), _trace("q", COPY, True, c=2, rnd=1, release=100.0)]
    f = figures(a + b)
    assert abs(f.aggregate_tps - 40 / (2.0 + 1.0)) < 1e-9  # type: ignore[operator]
    assert abs(f.tps_per_stream - 40 / (1.0 + 2.0 + 1.0 + 1.0)) < 1e-9  # type: ignore[operator]


def test_cell_pairs_ratio_and_per_prompt_cells() -> None:
    traces = _pair_traces(COPY, "a", 0.0, 0.1, 0.1) + _pair_traces(COPY, "b", 0.0, 0.1, 0.05)
    pairs = cell_pairs(traces)
    assert [(p.key.kind, p.key.concurrency) for p in pairs] == [(COPY, 1)]
    assert abs(pairs[0].speedup("tps_per_stream") - 2.0 / (0.4 + 0.2)) < 1e-9  # type: ignore[operator]
    assert abs(prompt_speedup_geomeans(traces)[(COPY, 0.0)] - (2.5 * 5.0) ** 0.5) < 1e-9
    per_prompt = cell_pairs(traces, by_prompt=True)
    assert [p.key.kind for p in per_prompt] == ["a", "b"]
    assert abs(per_prompt[1].speedup("tps_per_stream") - 1.0 / 0.2) < 1e-9  # type: ignore[operator]


def test_output_differences_name_the_prompt_and_the_first_differing_token() -> None:
    same = _pair_traces(COPY, "a", 0.0, 0.1, 0.1)
    assert output_differences(same) == (1, [])
    other = [_trace("b", OPEN, False), _trace("b", OPEN, True, ids=IDS[:4] + [99] + IDS[5:])]
    compared, diffs = output_differences(same + other)
    assert compared == 2 and [(d.prompt, d.first_difference) for d in diffs] == [("b", 4)]
    assert "DIFFER" in IdentityCheck(compared, tuple(diffs)).sentence()
    assert IdentityCheck(0, ()).met is None and IdentityCheck(2, ()).met is True


def _run_traces(copy_far_on_step: float, open_on_step: float) -> list[StreamTrace]:
    out: list[StreamTrace] = []
    for delay, copy_on in ((0.0, 0.05), (25.0, copy_far_on_step)):
        out += _pair_traces(COPY, "a", delay, 0.1, copy_on) + _pair_traces(OPEN, "s", delay, 0.1, open_on_step)
    return out


def test_targets_met_and_missed_in_words() -> None:
    # copy on: 10 tokens in 0.2 s vs 1.0 s off = 5x at 0 ms; 25 ms: 0.5 s = 2x (< 2.5); open-ended 0.4 s = 2.5x
    pairs = cell_pairs(_run_traces(0.125, 0.1))
    loop, far, floor, hf = check_targets(pairs, hf_copy_tps=25.0)
    assert loop.met is True and abs(loop.ratio - 5.0) < 1e-9  # type: ignore[operator]
    assert far.met is False and "MISSED" in far.sentence()
    assert floor.met is True and hf.met is True and abs(hf.ratio - 2.0) < 1e-9  # type: ignore[operator]
    slow_open = cell_pairs(_run_traces(0.05, 0.3))
    assert check_targets(slow_open, None)[2].met is False
    assert check_targets(slow_open, None)[3].met is None
    assert check_targets([], None)[0].met is None
    busy = _run_traces(0.125, 0.1)
    busy[0].other_cores = 0.5
    assert "up to 0.50 cores" in check_targets(cell_pairs(busy), None)[0].sentence()
    assert "up to" not in loop.sentence()


def test_round_plan_alternates_off_and_on_and_cycles_prompts_at_c8() -> None:
    prompts = [SpecPrompt(n, kind, text, (1, 2, 3)) for n, (kind, text) in PROMPT_TEXTS.items()]
    rounds = round_plan("m", prompts, SpecPlan([0.0]), 0.0)
    singles = [r for r in rounds if len(r.prompts) == 1]
    assert len(singles) == 2 * len(prompts) and [r.speculative for r in singles[:4]] == [False, True, True, False]
    eights = [r for r in rounds if len(r.prompts) == 8]
    assert len(eights) == 4 and {r.prompts[0].kind for r in eights} == {COPY, OPEN}
    assert len({r.index for r in rounds}) == len(rounds) and modes(3) == (True, False)
    copies = [p for p in prompts if p.kind == COPY]
    assert [p.name for p in cycled(copies, 8)] == [p.name for p in copies] * 2
    assert "teh" in PROMPT_TEXTS["spelling"][1]


def _report(traces: list[StreamTrace]) -> BenchReport:
    rep = BenchReport(settings={}, machine={}, workload={})
    rep.speculative = {"plan": asdict(SpecPlan([0.0, 25.0])), "streams": [t.to_json() for t in traces],
                       "prompts": [{"name": "a", "kind": COPY, "text": "t", "num_tokens": 3}],
                       "speculation": {"speculative": "ngram", "num_speculative_tokens": 8},
                       "transformers": {"transformers": "x", "torch": "y", "threads": 2, "other_cores_avg": 0.0,
                                        "streams": [{"prompt": "a", "kind": COPY, "t_release": 0.0,
                                                     "token_times": [0.1 * (k + 1) for k in range(10)],
                                                     "token_ids": IDS}]}}
    return rep


def test_section_and_json_round_trip(tmp_path: Path) -> None:
    rep = _report(_run_traces(0.125, 0.1))
    rep.speculative["summary"] = summary_json(rep.speculative)
    text = "\n".join(speculative_section(rep))
    assert "## Speculative decoding" in text and "**5.00×**" in text and "MISSED" in text
    assert "| a | 10 | 10.0 | 50.0 | 5.00× | yes |" in text  # transformers vs Shardline on at 0 ms
    assert rep.speculative["summary"]["targets"][-1]["met"] is True
    write_json(rep, tmp_path / "latest.json")
    back = load_report(tmp_path / "latest.json")
    write_markdown(back, tmp_path / "latest.md")
    assert "## Speculative decoding" in (tmp_path / "latest.md").read_text()
    assert find_pair(cell_pairs(_run_traces(0.125, 0.1)), OPEN, 25.0, 1) is not None


def test_other_rows_show_their_acceptance_without_the_section() -> None:
    rep = BenchReport(settings={}, machine={}, workload={})
    assert speculative_section(rep) == []
    rep.runs.append(summarize("shardline", "short", 1, "sequential", [Round([RequestTrace(0.0, [0.1, 0.2])])], 2,
                              extra={"draft_proposed": 40, "draft_accepted": 10}))
    text = "\n".join(speculative_section(rep))
    assert "shardline short c = 1 25% (10 of 40)" in text


def test_flag_and_plan_from_args() -> None:
    args = parse_args(["--skip-speculative", "--delays", "0,25", "--quick"])
    assert args.skip_speculative and SpecPlan.from_args(args).delays_ms == [0.0, 25.0]
    assert SpecPlan.from_args(args).max_tokens < SpecPlan.from_args(parse_args([])).max_tokens
    assert not parse_args([]).skip_speculative
