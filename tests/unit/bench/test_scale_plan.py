"""The scale row without a cluster: node budgets, KV room, bytes read per token, the report's rows and section,
the cluster config it writes, and the bench flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.membw import Bandwidth
from bench.options import parse_args
from bench.report import BenchReport, load_report, write_json
from bench.report_md import write_markdown
from bench.scale_model import ScaleShape, fp32_bytes, tensor_shapes
from bench.scale_plan import (
    bytes_read_per_token,
    format_summary,
    kv_tokens,
    node_budget_mb,
    run_row,
    set_bandwidth_shares,
)
from bench.scale_report import scale_lines
from bench.scale_run import ScaleCluster, record_bandwidth, record_weight_bandwidth, scale_workload
from bench.shardline_cluster import NodePlan
from bench.stats import RequestTrace, Round, summarize
from bench.weight_formats import WeightFormat
from bench.workload import Prompt, Workload
from protos.config import load_config

MIB = 2**20


def _stage_fp32_bytes(shape: ScaleShape, first: int, end: int, kv: int) -> int:
    """float32 bytes of layers [first, end) with the embedding (first stage) or norm + tied head (last), + KV."""
    def numel(prefix: str) -> int:
        return sum(math.prod(dims) for name, dims in tensor_shapes(shape) if name.startswith(prefix))

    layers = sum(numel(f"model.layers.{i}.") for i in range(first, end))
    extra = numel("model.embed_tokens") if first == 0 else 0
    extra += numel("model.embed_tokens") + numel("model.norm") if end == shape.num_layers else 0
    kv_bytes = kv * (end - first) * 2 * shape.kv_heads * shape.head_dim * 4
    return 4 * (layers + extra) + kv_bytes


def test_budget_is_below_the_fp32_size_yet_three_nodes_hold_it() -> None:
    shape = ScaleShape()
    budget = node_budget_mb(shape) * MIB
    assert budget < fp32_bytes(shape)  # no single node holds the model
    assert 2 * budget < fp32_bytes(shape)  # nor two: float32 needs all three
    kv = kv_tokens(37, 8, 32)
    assert all(_stage_fp32_bytes(shape, a, b, kv) <= budget for a, b in ((0, 8), (8, 16), (16, 24)))
    with pytest.raises(ValueError, match="budget share"):
        node_budget_mb(shape, 1.0)


def test_kv_budget_covers_the_widest_round_rounded_up() -> None:
    assert kv_tokens(37, 8, 32) == 1536  # 32 x 45 = 1440
    assert kv_tokens(37, 8, 1) == 256
    assert kv_tokens(248, 8, 1) == 256 and kv_tokens(249, 8, 1) == 512


def _shard(layers: tuple[int, int], weight: int, layer_weight: int, emb: bool, head: bool) -> dict[str, object]:
    return {"layers": list(layers), "weight_bytes": weight, "layer_weight_bytes": layer_weight,
            "has_embedding": emb, "has_head": head, "kv_bytes_per_token": 0}


def test_bytes_read_per_token_skip_the_first_shards_embedding_only() -> None:
    shards = [_shard((0, 8), 1000, 800, True, False), _shard((8, 16), 800, 800, False, False),
              _shard((16, 24), 1000, 800, False, True)]
    assert bytes_read_per_token(shards) == 800 + 800 + 1000  # the head (tied embedding copy) is read every step
    assert bytes_read_per_token([_shard((0, 24), 2600, 2400, True, True)]) == 2600  # one shard: embedding = head


def _run(c: int, step_s: float, n: int = 8) -> object:
    traces = [RequestTrace(t_release=0.0, token_times=[1.0 + step_s * i for i in range(n)], token_ids=[5] * n,
                           finish_reason="length") for _ in range(c)]
    return summarize("scale float32", "short", c, "concurrent streams", [Round(traces)], n)


def _memory() -> dict[str, object]:
    shards = {"node1": _shard((0, 8), 3_000_000_000, 2_600_000_000, True, False),
              "node2": _shard((8, 16), 2_600_000_000, 2_600_000_000, False, False),
              "node3": _shard((16, 24), 3_000_000_000, 2_600_000_000, False, True)}
    return {"node_info": {k: {"rss_bytes": 3_100_000_000, "shards": [v]} for k, v in shards.items()},
            "vm_hwm": {"node1": 3_200_000_000, "node2": 2_700_000_000, "node3": 3_150_000_000, "coordinator": 1}}


def test_format_summary_reports_weight_bandwidth_and_its_share() -> None:
    s = format_summary(_memory(), _run(1, 0.5))
    set_bandwidth_shares({"float32": s}, 20.0)
    assert s["bytes_read_per_token"] == 2_600_000_000 * 2 + 3_000_000_000
    assert s["c1_decode_ms_per_token"] == pytest.approx(500.0)
    assert s["c1_weight_gbps"] == pytest.approx(8.2 * 2)  # 8.2 GB every 0.5 s
    assert s["c1_share_of_read_bandwidth"] == pytest.approx(16.4 / 20.0)
    assert s["nodes"]["node1"] == {"layers": [0, 8], "weight_bytes": 3_000_000_000, "rss_bytes": 3_100_000_000,
                                   "vm_hwm_bytes": 3_200_000_000}
    assert set(s["nodes"]) == {"node1", "node2", "node3"}
    missing = format_summary(_memory(), None)
    set_bandwidth_shares({"float32": missing}, 20.0)
    assert missing["c1_weight_gbps"] is None and missing["c1_share_of_read_bandwidth"] is None


def _report() -> BenchReport:
    rep = BenchReport(settings={}, machine={"memory_bandwidth": {"read_gbps": 20.0, "copy_gbps": 15.0,
                                                                  "threads": 2}}, workload={})
    shape = ScaleShape()
    rep.scale.update(model={"name": shape.name, "num_layers": 24, "hidden": 2048, "intermediate": 8192, "heads": 32,
                            "kv_heads": 32, "vocab": 49152, "seed": 1234, "disk_dtype": "bfloat16",
                            "parameters": 1_711_376_384},
                     node_budget_mb=2937, budget_share=0.45, kv_cache_tokens=1536, new_tokens=8, prompt="short",
                     prompt_tokens=37, concurrency=[1, 8], runs=[], errors={"bfloat16+int4": "RuntimeError: boom"},
                     formats={"float32": format_summary(_memory(), _run(1, 0.5))})
    set_bandwidth_shares(rep.scale["formats"], 20.0)
    rep.scale["runs"] += [run_row("float32", _run(1, 0.5)), run_row("float32", _run(8, 0.8))]
    return rep


def test_report_section_shows_each_format_and_concurrency(tmp_path: Path) -> None:
    text = "\n".join(scale_lines(_report()))
    assert "## Scale row" in text and "2,937 MiB" in text and "45% of the float32" in text
    assert "| float32 | 1 | 2.00 | **1.78** |" in text  # per stream 7 tokens in 3.5 s; 8 tokens 4.5 s after release
    assert "| float32 | 8 | 1.25 | **9.70** |" in text  # 8 x 8 tokens 6.6 s after release
    assert "| float32 | node1 | 0–7 | 3,000 MB | 3,080 MB | 3,100 MB | 3,200 MB |" in text
    assert "16.40 GB/s | 82% |" in text
    assert "**bfloat16+int4** failed: RuntimeError: boom" in text
    assert scale_lines(BenchReport(settings={}, machine={}, workload={})) == []


def test_report_round_trips_through_json_and_markdown(tmp_path: Path) -> None:
    write_json(_report(), tmp_path / "latest.json")
    back = load_report(tmp_path / "latest.json")
    assert back.scale["runs"][1]["concurrency"] == 8 and back.scale["formats"]["float32"]["nodes"]["node2"]
    write_markdown(back, tmp_path / "latest.md")
    assert "## Scale row" in (tmp_path / "latest.md").read_text()


def _workload(model_dir: Path) -> Workload:
    return Workload(model_name="smollm2-135m-instruct", model_dir=str(model_dir), gguf_path="x.gguf", max_tokens=16,
                    concurrency=[1, 8], sequential_requests=3,
                    prompts=[Prompt("short", (1, 2, 3), "q"), Prompt("long", (1,) * 50, "l")])


def test_cluster_config_budgets_every_node_and_names_the_scale_model(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "scale-llama-1.7b"
    w = scale_workload(_workload(tmp_path), folder, ScaleShape(), 8)
    assert (w.model_name, w.max_tokens, w.gguf_path, [p.kind for p in w.prompts]) == (
        "scale-llama-1.7b", 8, None, ["short"])
    nodes = [NodePlan(f"node{i}", "127.0.0.1", 50060 + i) for i in (1, 2, 3)]
    cluster = ScaleCluster(w, tmp_path / "run", nodes, 0, None, WeightFormat("bfloat16", "int8"), 2937, 1536)
    (tmp_path / "run").mkdir()
    cluster.write_cluster_config()
    config = load_config(cluster.config_path)
    assert [n.memory_mb for n in config.nodes] == [2937] * 3
    (model,) = config.models
    assert (model.name, model.dtype, model.quantization, model.kv_cache_tokens) == (
        "scale-llama-1.7b", "bfloat16", "int8", 1536)
    assert config.model_dir(model.name) == folder.resolve()
    assert json.loads(cluster.config_path.read_text())["coordinator"]["rpc_timeout_s"] == 300.0


def test_bandwidth_ceiling_is_the_best_of_every_measurement() -> None:
    rep = BenchReport(settings={}, machine={}, workload={})
    record_bandwidth(rep, Bandwidth(read_gbps=5.0, copy_gbps=9.0, buffer_bytes=10**9, threads=2))
    record_bandwidth(rep, Bandwidth(read_gbps=7.0, copy_gbps=8.0, buffer_bytes=10**9, threads=2))
    bw = rep.machine["memory_bandwidth"]
    assert (bw["read_gbps"], bw["copy_gbps"], len(bw["samples"])) == (7.0, 9.0, 2)
    assert "best of 2): read 7.00 GB/s, copy 9.00 GB/s" in "\n".join(scale_lines(_report_with(bw)))


def _report_with(bw: dict[str, object]) -> BenchReport:
    rep = _report()
    rep.machine["memory_bandwidth"] = bw
    return rep


def test_scale_flags() -> None:
    args = parse_args(["--quick"])
    assert (args.skip_scale, args.scale_tokens) == (False, 8)
    args = parse_args(["--skip-scale", "--scale-tokens", "4"])
    assert (args.skip_scale, args.scale_tokens) == (True, 4)


def test_the_default_models_rows_get_their_weight_bandwidth_share_too(tmp_path: Path) -> None:
    rep = BenchReport(settings={}, machine={}, workload={})
    record_bandwidth(rep, Bandwidth(read_gbps=20.0, copy_gbps=9.0, buffer_bytes=10**9, threads=2))
    record_weight_bandwidth(rep, "shardline bfloat16+int4", [_run(8, 0.1), _run(1, 0.5)], _memory())
    row = rep.bandwidth["shardline bfloat16+int4"]
    assert row["c1_share_of_read_bandwidth"] == pytest.approx(16.4 / 20.0) and "nodes" not in row
    write_markdown(rep, tmp_path / "latest.md")
    text = (tmp_path / "latest.md").read_text()
    assert "## Weight bandwidth at c = 1" in text and "| shardline bfloat16+int4 | 8,200 MB |" in text
