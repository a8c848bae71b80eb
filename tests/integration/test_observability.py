"""Metrics through a real Prometheus server: the launcher starts it scraping every process of a running
cluster; requests go through the API; Prometheus' HTTP API shows the main series exist and moved. The
Grafana dashboard is the one its builder makes, every query passes promtool, and it uses only metrics
the services export. The compose scrape config agrees with config.json."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.prometheus_config import scrape_targets
from prometheus.grafana.build_dashboard import OUT as DASHBOARD
from prometheus.grafana.build_dashboard import build
from protos.config import load_config
from tests.conftest import ROOT, RunningCluster, free_port, start_cluster, tiny_cluster_config

MODEL = "tiny-observed"
METRIC = re.compile(r"\bshardline_[a-z0-9_]+")


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: make setup installs the Debian package 'prometheus' (apt-get install " \
                 "prometheus); without apt, see prometheus.io/download"
    return path


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    need("prometheus")
    work = tmp_path_factory.mktemp("observed")
    config = tiny_cluster_config(work, smol_dir, MODEL, ["o1", "o2"], 2048, seed=8, num_layers=4)
    config["coordinator"]["metrics_port"] = free_port()
    config["tokenizer"]["metrics_port"] = free_port()
    for node in config["nodes"]:
        node["metrics_port"] = free_port()
    port = free_port()
    running = start_cluster(config, work, launcher_args=("--prometheus", str(port)))
    running.prometheus_url = f"http://127.0.0.1:{port}"
    yield running
    running.stop()


def prom(cluster: RunningCluster, query: str) -> list[dict]:
    r = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": query}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return r.json()["data"]["result"]


def value(cluster: RunningCluster, query: str) -> float:
    result = prom(cluster, query)
    return sum(float(r["value"][1]) for r in result)


@pytest.mark.cluster
def test_prometheus_scrapes_every_service_and_the_main_series_move(observed: RunningCluster) -> None:
    api = observed.api_url
    for i in range(3):
        r = httpx.post(f"{api}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 12, "stream": True})
        assert r.status_code == 200
        assert httpx.post(f"{api}/api/model/process", json={"text": "hi", "model": MODEL, "max_tokens": 5},
                          timeout=60).status_code == 200
    jobs = {job: len(targets) for job, targets in scrape_targets(load_config(observed.config_path)).items()}
    deadline = time.monotonic() + 60
    while value(observed, "shardline_request_success_total") < 6 or len(prom(observed, "up")) < sum(jobs.values()) \
            or value(observed, "shardline_tokenizer_request_seconds_count") < 6 \
            or value(observed, 'shardline_api_requests_total{route="/api/model/process"}') < 3:
        assert time.monotonic() < deadline, ("Prometheus did not scrape the cluster within 60 s", [
            (q, value(observed, q)) for q in ("count(up)", "shardline_request_success_total",
                                              "shardline_tokenizer_request_seconds_count",
                                              'shardline_api_requests_total{route="/api/model/process"}')])
        time.sleep(1)
    up = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in prom(observed, "up")}
    assert {job: sum(1 for j, _ in up if j == job) for job in jobs} == jobs == {
        "api": 1, "coordinator": 1, "tokenizer": 1, "nodes": 2}
    assert set(up.values()) == {"1"}, up
    labelled = f'model_name="{MODEL}"'
    moved = {
        "shardline_generation_tokens_total": 6,
        "shardline_prompt_tokens_total": 6,
        "shardline_prefix_cache_queries_total": 6,
        "shardline_prefix_cache_hits_total": 16,  # three chats of the same template: their first block at least
        "shardline_prefix_cache_hit_rate": 1e-6,
        "shardline_prefix_cache_blocks": 1,
        f"shardline_request_success_total{{{labelled}}}": 6,
        "shardline_time_to_first_token_seconds_count": 6,
        "shardline_inter_token_latency_seconds_count": 1,
        "shardline_e2e_request_latency_seconds_count": 6,
        "shardline_request_queue_time_seconds_count": 6,
        'shardline_stage_forward_seconds_count{phase="prefill"}': 2,
        'shardline_stage_forward_seconds_count{phase="decode"}': 2,
        "shardline_micro_batch_size_count": 6,
        "shardline_hidden_state_bytes_total": 1,
        "shardline_stage_busy_seconds_total": 1e-6,
        "shardline_link_bytes_total": 1,
        "shardline_link_round_trip_seconds_count": 1,
        "shardline_node_forward_seconds_count": 2,
        "shardline_node_kv_cache_capacity_tokens": 2 * 2048,
        "shardline_tokenizer_request_seconds_count": 6,
        'shardline_api_requests_total{route="/v1/chat/completions",status="200"}': 3,
        "shardline_node_up": 2,
        'shardline_replica_state{state="ready"}': 2,
    }
    for query, at_least in moved.items():
        assert value(observed, query) >= at_least, (query, prom(observed, query))
    assert value(observed, "shardline_num_requests_running") == 0
    for r in prom(observed, "shardline_stage_forward_seconds_count"):  # every series names its model and node
        assert r["metric"]["model_name"] == MODEL and r["metric"]["node"] in ("o1", "o2")
    for r in prom(observed, "shardline_link_bytes_total"):  # links join the nodes and the coordinator
        assert r["metric"]["model_name"] == MODEL and {r["metric"]["src"], r["metric"]["dst"]} <= {
            "o1", "o2", "coordinator"}


@pytest.mark.cluster
def test_the_cluster_route_charts_where_the_time_went(observed: RunningCluster) -> None:
    r = httpx.post(f"{observed.api_url}/api/model/process", json={"text": "hi", "model": MODEL, "max_tokens": 5},
                   timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30  # the coordinator samples every 2 s
    while True:
        model = next(m for m in httpx.get(f"{observed.api_url}/api/cluster", timeout=10).json()["models"]
                     if m["name"] == MODEL)
        history = model["history"] or {"stages": [], "links": []}
        busy = {s["node"] for s in history["stages"] if any(v > 0 for v in s["busy_share"])}
        if busy == {"o1", "o2"}:
            break
        assert time.monotonic() < deadline, ("no busy stages in /api/cluster's history", history)
        time.sleep(0.5)
    assert history["interval_s"] == 2.0 and all(0 <= v <= 1 for s in history["stages"] for v in s["busy_share"])
    assert history["links"] and any(v > 0 for link in history["links"] for v in link["bytes_per_s"])
    assert any(v is not None and v > 0 for link in history["links"] for v in link["rtt_ms"])


@pytest.mark.cluster
def test_the_dashboard_uses_only_exported_metrics(observed: RunningCluster) -> None:
    config = load_config(observed.config_path)
    exported: set[str] = set()
    for targets in scrape_targets(config).values():
        for target in targets:
            text = httpx.get(f"http://{target}/metrics", timeout=10).text
            exported |= {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                         if line.startswith("shardline_")}
    used = {m for expr in dashboard_queries() for m in METRIC.findall(expr)}
    assert used, "the dashboard queries no metric"
    assert used <= exported, f"the dashboard uses metrics nothing exports: {sorted(used - exported)}"


def test_the_committed_dashboard_is_what_the_builder_builds() -> None:
    assert json.loads(DASHBOARD.read_text()) == build(), "run `make dashboard` and commit the result"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("request rate", "time to first token", "inter-token", "throughput", "queue", "micro-batch size",
                  "per-stage", "kv cache", "node state", "failover"):
        assert topic in titles, topic


def test_every_dashboard_query_passes_promtool(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(dashboard_queries())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))
    out = subprocess.run([need("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_scrape_config_agrees_with_config_json() -> None:
    path = ROOT / "prometheus" / "prometheus.yml"
    out = subprocess.run([need("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = path.read_text()
    local = scrape_targets(load_config(ROOT / "config.json"))
    for job, targets in local.items():
        assert f"job_name: {job}" in text, job
        for target in targets:
            assert f":{target.rsplit(':', 1)[1]}\"" in text, (job, target)  # same port, compose service name
