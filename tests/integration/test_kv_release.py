"""KV caches are freed on every node when requests finish and when a client disconnects (gRPC or HTTP,
streaming or not)."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import SMOL, RunningCluster
from tests.integration.helpers import chat_ids, node_info
from tests.integration.test_concurrency import assert_kv_empty

pytestmark = pytest.mark.cluster


def test_kv_empty_after_requests(cluster: RunningCluster) -> None:
    for text in ("Hello!", "Tell me a joke."):
        r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": text, "max_tokens": 8}, timeout=300)
        assert r.status_code == 200
    assert_kv_empty(cluster)


@pytest.mark.parametrize("model", [SMOL, "tiny-llama-4way-uneven"])
def test_kv_freed_when_client_disconnects(cluster: RunningCluster, smol_dir, model: str) -> None:
    ids = chat_ids(smol_dir, "Write a very long story about a dragon.")
    with grpc.insecure_channel(cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        call = stub.Generate(coordinator_pb2.GenerateRequest(model=model, prompt_token_ids=ids, max_tokens=200,
                                                             ignore_eos=True), timeout=300)
        received = 0
        for reply in call:
            received += len(reply.token_ids)
            if received >= 3:
                break
        nodes = [s["node"] for m in cluster.layout if m["model"] == model for s in m["stages"]]
        in_use = [s.num_sequences for n in cluster.config["nodes"] if n["id"] in nodes
                  for s in node_info(n["address"]).shards if s.model == model]
        assert all(n == 1 for n in in_use), f"each stage should hold the sequence while it runs: {in_use}"
        call.cancel()
    assert_kv_empty(cluster)


def _sequences_per_stage(cluster: RunningCluster, model: str) -> list[int]:
    nodes = [s["node"] for m in cluster.layout if m["model"] == model for s in m["stages"]]
    return [s.num_sequences for n in cluster.config["nodes"] if n["id"] in nodes
            for s in node_info(n["address"]).shards if s.model == model]


LONG = [{"role": "user", "content": "Write a very long story about a dragon."}]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": LONG, "max_tokens": 200, "ignore_eos": True, "stream": True}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True}),
    ("/api/model/stream", {"text": "Write a very long story.", "max_tokens": 200, "ignore_eos": True}),
])
def test_kv_freed_when_http_stream_disconnects(cluster: RunningCluster, path: str, body: dict) -> None:
    with httpx.stream("POST", cluster.api_url + path, json=body, timeout=300) as r:
        assert r.status_code == 200
        tokens = 0
        for line in r.iter_lines():
            tokens += line.startswith("data: ")
            if tokens >= 4:
                break
        assert _sequences_per_stage(cluster, SMOL) == [1, 1, 1], "each stage holds the sequence while it runs"
    # leaving the block closes the connection: generation stops and every node frees the sequence
    assert_kv_empty(cluster, within_s=5)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": LONG, "max_tokens": 200, "ignore_eos": True}),
    ("/api/model/process", {"text": "Write a very long story.", "max_tokens": 200, "ignore_eos": True}),
])
def test_kv_freed_when_http_client_gives_up(cluster: RunningCluster, path: str, body: dict) -> None:
    outcome: list[object] = []

    def give_up() -> None:  # waits 3 s for the answer, then closes the connection
        try:
            outcome.append(httpx.post(cluster.api_url + path, json=body, timeout=httpx.Timeout(30, read=3)))
        except httpx.ReadTimeout as e:
            outcome.append(e)

    waiting = threading.Thread(target=give_up)
    waiting.start()
    deadline = time.monotonic() + 3
    while _sequences_per_stage(cluster, SMOL) != [1, 1, 1]:
        assert time.monotonic() < deadline, "the request never reached the nodes"
        time.sleep(0.05)
    waiting.join()
    assert isinstance(outcome[0], httpx.ReadTimeout), f"200 tokens should take longer than 3 s: {outcome}"
    assert_kv_empty(cluster, within_s=5)
