"""The latency table and issue 19's targets without a cluster: rows from recorded runs, the delay checks, the
targets in words, the report's sections, the two-relay cluster config and the flags. No timing."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.hop import HopResult
from bench.latency_md import latency_section, targets_json, tls_hop_lines, wire_section
from bench.latency_report import added_per_step, delay_multiplicity, find_row, outputs_identical, table_rows
from bench.latency_table import LONG_TOKENS, TablePlan, cells, interleaved
from bench.options import parse_args
from bench.relay_cluster import RelayCluster, coordinator_settings
from bench.report import HF, BenchReport, load_report, write_json
from bench.report_md import write_markdown
from bench.shardline_cluster import NodePlan
from bench.stats import RequestTrace, Round, summarize
from bench.targets import cheapest_identical, check_targets
from bench.workload import Prompt, Workload
from protos.config import load_config

FIRST = [5, 6, 7]


def _run(delay: float, mode: str, prompt: str, c: int, step_s: float, ttft_s: float, n: int = 4,
         first: list[int] | None = None) -> dict[str, Any]:
    """A run of c streams, each: first token after ttft_s, then one every step_s."""
    traces = [RequestTrace(0.0, [ttft_s + i * step_s for i in range(n)], list(first or FIRST)) for _ in range(c)]
    r = summarize(f"{mode} {delay:g} ms", prompt, c, "x", [Round(traces)], n,
                  extra={"first_tokens": list(first or FIRST)})
    return {"delay_ms": delay, "forwarding": mode, **asdict(r)}


def _runs(step: dict[tuple[float, str], float]) -> list[dict[str, Any]]:
    out = []
    for (delay, mode), s in step.items():
        out += [_run(delay, mode, "short", 1, s, 0.1), _run(delay, mode, "short", 8, s, 0.1),
                _run(delay, mode, "short", 32, s, 0.1), _run(delay, mode, "long", 1, s, 1.0 + delay / 100)]
    return out


STEPS = {(0.0, "direct"): 0.1, (0.0, "star"): 0.1, (5.0, "direct"): 0.105, (5.0, "star"): 0.13,
         (25.0, "direct"): 0.2, (25.0, "star"): 0.4}


def test_rows_hold_the_petals_columns_per_delay_and_relay() -> None:
    rows = table_rows(_runs(STEPS), {"long": 500})
    assert [(r.delay_ms, r.forwarding) for r in rows] == [
        (0.0, "star"), (0.0, "direct"), (5.0, "star"), (5.0, "direct"), (25.0, "star"), (25.0, "direct")]
    far = find_row(rows, 25.0, "direct")
    assert far is not None
    assert math.isclose(far.steps_per_s or 0, 5.0)  # 3 steps in 0.6 s
    assert math.isclose(far.tokens_per_s or 0, 4 / 0.7)  # 4 tokens, last at 0.7 s after the release
    assert math.isclose(far.aggregate_tps[32] or 0, 32 * 4 / 0.7)
    assert sorted(far.aggregate_tps) == [8, 32]
    assert math.isclose(far.ttft_long_ms or 0, 1250.0)
    assert math.isclose(far.prefill_tps or 0, 400.0)
    assert far.exact


def test_targets_are_checked_with_their_ratios() -> None:
    rows = table_rows(_runs(STEPS), {"long": 500})
    wire = [{"wire_dtype": "float32", "bytes_per_token": 2304, "bytes_share_of_float32": 1.0, "identical_share": 1.0,
             "prompts": 9},
            {"wire_dtype": "bfloat16", "bytes_per_token": 1152, "bytes_share_of_float32": 0.5, "identical_share": 1.0,
             "prompts": 9},
            {"wire_dtype": "int8", "bytes_per_token": 580, "bytes_share_of_float32": 0.25, "identical_share": 0.75,
             "prompts": 9}]
    near, far, agg, ttft, comp = check_targets(rows, 800.0, wire)
    assert math.isclose(near.ratio or 0, 0.1 / 0.105) and near.met
    assert math.isclose(far.ratio or 0, 2.0) and far.met
    assert math.isclose(agg.ratio or 0, (0.1 + 3 * 0.1) / (0.1 + 3 * 0.105)) and agg.met  # N / last token time
    assert math.isclose(ttft.ratio or 0, 1000.0 / 800.0) and ttft.met is False
    assert "MISSED by 4%" in ttft.sentence()
    assert comp.ratio == 0.5 and comp.met and "bfloat16" in comp.detail
    assert cheapest_identical(wire) == "bfloat16"


def test_missing_rows_and_baselines_say_not_measured() -> None:
    rows = table_rows([r for r in _runs(STEPS) if r["delay_ms"] != 25.0])
    _, far, _, ttft, comp = check_targets(rows, None, [])
    assert far.met is None and "no 25 ms direct row" in far.sentence()
    assert ttft.met is None and "transformers did not run" in ttft.sentence()
    assert comp.met is None


def test_a_wire_dtype_that_changes_output_is_never_the_cheapest() -> None:
    wire = [{"wire_dtype": "float32", "bytes_per_token": 2304, "bytes_share_of_float32": 1.0, "identical_share": 1.0,
             "prompts": 9},
            {"wire_dtype": "int8", "bytes_per_token": 580, "bytes_share_of_float32": 0.25, "identical_share": 0.9,
             "prompts": 9}]
    assert cheapest_identical(wire) == "float32"
    (comp,) = check_targets([], None, wire)[4:]
    assert comp.met is False and "no compressed wire dtype" in comp.detail


def test_added_time_per_step_counts_one_way_delays() -> None:
    added = added_per_step(table_rows(_runs(STEPS)))
    assert sorted(added) == [(5.0, "direct"), (5.0, "star"), (25.0, "direct"), (25.0, "star")]
    ms, trips = added[(25.0, "star")]
    assert math.isclose(ms, 300.0) and math.isclose(trips, 12.0)  # 400 ms per step instead of 100
    assert math.isclose(added[(5.0, "direct")][1], 1.0)


def test_delay_multiplicity_counts_waits_per_direction() -> None:
    checks = {"0": {"root-node1": {"tcp_rtt_p50_ms": 0.2}, "node1-node2": {"tcp_rtt_p50_ms": 0.3}},
              "5": {"root-node1": {"tcp_rtt_p50_ms": 10.2}, "node1-node2": {"tcp_rtt_p50_ms": 20.3}}}
    assert delay_multiplicity(checks) == {"5": {"root-node1": 1.0, "node1-node2": 2.0}}


def test_outputs_identical_compares_every_delay_and_relay() -> None:
    runs = _runs(STEPS)
    assert outputs_identical(runs) == {"long": True, "short": True}
    runs.append(_run(5.0, "star", "short", 1, 0.1, 0.1, first=[5, 6, 8]))
    assert outputs_identical(runs)["short"] is False


def _workload(tmp_path: Path) -> Workload:
    folder = tmp_path / "cache" / "smollm2-135m-instruct"
    folder.mkdir(parents=True)
    return Workload("smollm2-135m-instruct", str(folder), None, 32, [1], 3,
                    [Prompt("short", (1, 2), "q"), Prompt("long", tuple(range(500)), "p")])


def test_report_sections_round_trip_through_json(tmp_path: Path) -> None:
    w = _workload(tmp_path)
    rep = BenchReport(settings={}, machine={}, workload=w.to_json())
    rep.netns = {"setup": "namespaces", "plan": {"concurrency": [8, 32], "requests": 3, "tokens": 32,
                                                 "long_tokens": 8},
                 "delay_checks": {"0": {"root-node1": {"tcp_rtt_p50_ms": 0.2}, "node1-node2": {"tcp_rtt_p50_ms": 0.3}}},
                 "runs": _runs(STEPS)}
    rep.runs.append(summarize(HF, "long", 1, "sequential", [Round([RequestTrace(0.0, [0.8, 0.9])])], 2))
    rep.hop = [asdict(HopResult("loopback", 1, 576, 2304, 100, 400.0, 900.0, 420.0, 6.0, 6.0)),
               asdict(HopResult("loopback", 1, 576, 2304, 100, 550.0, 950.0, 560.0, 6.0, 6.0,
                                "mutual TLS + cluster token"))]
    rep.targets = targets_json(rep)
    assert rep.targets[3]["ratio"] is not None and math.isclose(rep.targets[3]["ratio"], 1000 / 800)
    write_json(rep, tmp_path / "latest.json")
    back = load_report(tmp_path / "latest.json")
    text = "\n".join(latency_section(back) + tls_hop_lines(back.hop))
    assert "| 25 ms (50 ms) | direct | 5.0 |" in text
    assert "(1.38×, +150 µs)" in text
    assert wire_section(back) == []
    write_markdown(back, tmp_path / "latest.md")
    assert "## Issue 19 targets (this run)" in (tmp_path / "latest.md").read_text()


def test_relay_cluster_serves_the_model_once_per_forwarding_mode(tmp_path: Path) -> None:
    w = _workload(tmp_path)
    nodes = [NodePlan(f"node{i}", f"10.231.{i}.2", 50051) for i in (1, 2, 3)]
    cluster = RelayCluster(w, tmp_path / "run", nodes, 0)
    (tmp_path / "run").mkdir()
    cluster.write_cluster_config()
    config = load_config(cluster.config_path)
    assert [(m.name, m.forwarding, m.dtype) for m in config.models] == [
        ("smollm2-135m-instruct-star", "star", "float32"), ("smollm2-135m-instruct-direct", "direct", "float32")]
    for m in config.models:
        assert config.model_dir(m.name).resolve() == Path(w.model_dir).resolve()
    assert [n.address for n in config.nodes] == [f"10.231.{i}.2:50051" for i in (1, 2, 3)]
    assert set(coordinator_settings(cluster.config_path)) <= {"ring_decode", "pipelined_prefill", "max_batch_tokens"}


def test_relays_take_turns_in_pairs_whose_order_alternates() -> None:
    assert interleaved(("star", "direct"), 3, 0) == ["star", "direct", "direct", "star", "star", "direct"]
    assert interleaved(("star", "direct"), 1, 1) == ["direct", "star"]


def test_table_cells_cover_one_stream_every_level_and_the_long_prompt(tmp_path: Path) -> None:
    plan = TablePlan([0.0, 5.0], [8, 32], 3, 32)
    got = [(c.kind, c.concurrency, c.tokens(plan)) for c in cells(plan, _workload(tmp_path))]
    assert got == [("short", 1, 32), ("short", 8, 32), ("short", 32, 32), ("long", 1, LONG_TOKENS)]


def test_table_flags() -> None:
    args = parse_args(["--delays", "0,5,25", "--table-concurrency", "8,32", "--tokens", "128"])
    assert (args.delays, args.table_concurrency) == ([0.0, 5.0, 25.0], [8, 32])
    assert TablePlan.from_args(args).tokens == 32  # the table's own token count, whatever --tokens
    assert parse_args(["--quick"]).table_concurrency == [8]
