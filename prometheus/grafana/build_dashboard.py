"""Builds prometheus/grafana/dashboards/shardline.json with grafana-foundation-sdk (typed builders, so the JSON
is valid by construction). Run `python -m prometheus.grafana.build_dashboard` (make dashboard) after a change;
a test checks that the committed file is what this builds, that every query passes promtool, and that every
metric it uses is one the services export."""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueColorMode, GraphDrawStyle
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards" / "shardline.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioned with this uid
WINDOW = "[1m]"


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DATASOURCE)


def quantiles(metric: str, by: str = "model_name") -> list[prometheus.Dataquery]:
    return [q(f"histogram_quantile({p}, sum by (le, {by}) (rate({metric}_bucket{WINDOW})))", f"p{int(p * 100)} "
              f"{{{{{by}}}}}", ref) for p, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))]


def series(title: str, unit: str, queries: list[prometheus.Dataquery], w: int = 12, h: int = 8,
           description: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(h).span(w) \
        .draw_style(GraphDrawStyle.LINE).line_width(1).fill_opacity(10).description(description)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def build() -> dict:
    per_stage = (f"sum by (node, phase) (rate(shardline_stage_forward_seconds_sum{WINDOW})) / "
                 f"sum by (node, phase) (rate(shardline_stage_forward_seconds_count{WINDOW}))")
    d = (dashboard.Dashboard("Shardline").uid("shardline").tags(["shardline", "llm", "pipeline"])
         .refresh("5s").time("now-30m", "now").timezone("browser").editable()
         .description("Pipeline-parallel serving: requests, latency, throughput, batching, per-stage time, KV "
                      "cache, nodes and failovers.")
         .with_row(dashboard.Row("Requests"))
         .with_panel(stat.Panel().title("Requests running / waiting").datasource(DATASOURCE).height(4).span(6)
                     .color_mode(BigValueColorMode.VALUE)
                     .with_target(q("sum(shardline_num_requests_running)", "running"))
                     .with_target(q("sum(shardline_num_requests_waiting)", "waiting", "B")))
         .with_panel(stat.Panel().title("Nodes up").datasource(DATASOURCE).height(4).span(6)
                     .with_target(q("sum(shardline_node_up)", "up"))
                     .with_target(q("count(shardline_node_up)", "known", "B")))
         .with_panel(stat.Panel().title("Failovers (1 h)").datasource(DATASOURCE).height(4).span(6)
                     .with_target(q("sum(increase(shardline_failovers_total[1h]))", "sequences moved")))
         .with_panel(stat.Panel().title("Generation throughput").datasource(DATASOURCE).unit("tokens/s").height(4)
                     .span(6).with_target(q(f"sum(rate(shardline_generation_tokens_total{WINDOW}))", "tokens/s")))
         .with_panel(series("Request rate by finish reason", "reqps", [
             q(f"sum by (model_name, finished_reason) (rate(shardline_request_success_total{WINDOW}))",
               "{{model_name}} {{finished_reason}}"),
             q(f"sum by (model_name) (rate(shardline_request_failure_total{WINDOW}))", "{{model_name}} error", "B")]))
         .with_panel(series("Queue depth", "short", [
             q("sum by (model_name) (shardline_num_requests_waiting)", "waiting {{model_name}}"),
             q("sum by (model_name) (shardline_num_requests_running)", "running {{model_name}}", "B")]))
         .with_row(dashboard.Row("Latency"))
         .with_panel(series("Time to first token", "s", quantiles("shardline_time_to_first_token_seconds"), w=8))
         .with_panel(series("Inter-token latency", "s", quantiles("shardline_inter_token_latency_seconds"), w=8))
         .with_panel(series("End-to-end request latency", "s", quantiles("shardline_e2e_request_latency_seconds"),
                            w=8))
         .with_panel(series("Queue time", "s", quantiles("shardline_request_queue_time_seconds"), w=12))
         .with_panel(series("Throughput", "tokens/s", [
             q(f"sum by (model_name) (rate(shardline_generation_tokens_total{WINDOW}))", "generated {{model_name}}"),
             q(f"sum by (model_name) (rate(shardline_prompt_tokens_total{WINDOW}))", "prompt {{model_name}}", "B")]))
         .with_row(dashboard.Row("Speculative decoding"))
         .with_panel(series("Draft acceptance rate", "percentunit", [
             q(f"sum by (model_name) (rate(shardline_spec_decode_num_accepted_tokens_total{WINDOW})) / sum by "
               f"(model_name) (rate(shardline_spec_decode_num_draft_tokens_total{WINDOW}))", "{{model_name}}")], w=8,
             description="Share of the draft tokens (from each sequence's own prompt and output) that the model's "
                         "own choice agreed with."))
         .with_panel(series("Tokens per verify step", "short", [
             q(f"(sum by (model_name) (rate(shardline_spec_decode_num_accepted_tokens_total{WINDOW})) + sum by "
               f"(model_name) (rate(shardline_spec_decode_num_drafts_total{WINDOW}))) / sum by (model_name) "
               f"(rate(shardline_spec_decode_num_drafts_total{WINDOW}))", "{{model_name}}")], w=8,
             description="Tokens a sequence got from one pass through the pipeline when it verified drafts (1 = "
                         "none accepted)."))
         .with_panel(series("Draft tokens", "tokens/s", [
             q(f"sum by (model_name) (rate(shardline_spec_decode_num_draft_tokens_total{WINDOW}))",
               "proposed {{model_name}}"),
             q(f"sum by (model_name) (rate(shardline_spec_decode_num_accepted_tokens_total{WINDOW}))",
               "accepted {{model_name}}", "B")], w=8))
         .with_row(dashboard.Row("Pipeline"))
         .with_panel(series("Per-stage forward time (mean per micro-batch)", "s", [q(per_stage, "{{node}} {{phase}}")],
                            description="The slowest stage bounds the pipeline's throughput."))
         .with_panel(bargauge.Panel().title("Slowest stage: mean decode time per micro-batch").unit("s")
                     .datasource(DATASOURCE).height(8).span(12)
                     .with_target(q("sort_desc(sum by (node) (rate(shardline_stage_forward_seconds_sum"
                                    f"{{phase=\"decode\"}}{WINDOW})) / sum by (node) (rate("
                                    f"shardline_stage_forward_seconds_count{{phase=\"decode\"}}{WINDOW})))",
                                    "{{node}}")))
         .with_panel(series("Micro-batch size", "short", [
             q(f"sum by (model_name) (rate(shardline_micro_batch_size_sum{WINDOW})) / sum by (model_name) "
               f"(rate(shardline_micro_batch_size_count{WINDOW}))", "sequences {{model_name}}"),
             q(f"sum by (model_name) (rate(shardline_micro_batch_tokens_sum{WINDOW})) / sum by (model_name) "
               f"(rate(shardline_micro_batch_tokens_count{WINDOW}))", "tokens {{model_name}}", "B")]))
         .with_panel(series("Micro-batches in flight", "short", [
             q("sum by (model_name) (shardline_micro_batches_in_flight)", "in flight {{model_name}}"),
             q("sum by (model_name) (shardline_pipeline_depth)", "depth {{model_name}}", "B")]))
         .with_panel(series("Stage busy share", "percentunit", [
             q(f"sum by (model_name, node) (rate(shardline_stage_busy_seconds_total{WINDOW}))",
               "{{node}} {{model_name}}")], w=8,
             description="Share of the time each stage computed micro-batches; the busiest stage near 100% is the "
                         "bottleneck."))
         .with_panel(series("Link round trip (p50, p90)", "s", [
             q(f"histogram_quantile({p}, sum by (le, src, dst) (rate(shardline_link_round_trip_seconds_bucket"
               f"{WINDOW})))", f"p{int(p * 100)} {{{{src}}}} → {{{{dst}}}}", ref)
             for p, ref in ((0.5, "A"), (0.9, "B"))], w=8,
             description="Round trip of one micro-batch over each link (node ids, or coordinator)."))
         .with_panel(series("Link throughput", "Bps", [
             q(f"sum by (src, dst) (rate(shardline_link_bytes_total{WINDOW}))", "{{src}} → {{dst}}")], w=8,
             description="Hidden states and tokens sent over each link (every hop: to and from the coordinator, "
                         "or node to node when stages forward directly)."))
         .with_row(dashboard.Row("Nodes"))
         .with_panel(series("KV cache use per node", "percentunit", [
             q("sum by (node) (shardline_node_kv_cache_used_tokens) / sum by (node) "
               "(shardline_node_kv_cache_capacity_tokens)", "{{node}}")]))
         .with_panel(series("Node state", "short", [q("shardline_node_state == 1", "{{node}} {{state}}")],
                            description="1 while a node is in the state named in the legend."))
         .with_panel(series("Node memory", "bytes", [
             q("shardline_node_rss_bytes", "RSS {{node}}"),
             q("shardline_node_memory_used_bytes", "shards {{node}}", "B")]))
         .with_panel(series("Node forward time by phase (p90)", "s", [
             q(f"histogram_quantile(0.9, sum by (le, node, phase) (rate(shardline_node_forward_seconds_bucket"
               f"{WINDOW})))", "{{node}} {{phase}}")]))
         .with_row(dashboard.Row("Failures and edges"))
         .with_panel(series("Failovers and recovery", "short", [
             q("sum by (model_name) (increase(shardline_failovers_total[5m]))", "failovers {{model_name}}"),
             q("sum by (model_name, node) (increase(shardline_node_down_total[5m]))", "down {{node}}", "B"),
             q("histogram_quantile(0.5, sum by (le) (rate(shardline_failover_recovery_seconds_bucket[5m])))",
               "recovery p50 (s)", "C")], w=8))
         .with_panel(series("Tokenizer latency (p99)", "s", [
             q(f"histogram_quantile(0.99, sum by (le, method) (rate(shardline_tokenizer_request_seconds_bucket"
               f"{WINDOW})))", "{{method}}")], w=8))
         .with_panel(series("API requests by route and status", "reqps", [
             q(f"sum by (route, status) (rate(shardline_api_requests_total{WINDOW}))", "{{route}} {{status}}")], w=8)))
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")  # noqa: T201


if __name__ == "__main__":
    main()
