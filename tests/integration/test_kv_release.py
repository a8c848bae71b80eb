"""KV caches are freed on every node when requests finish and when a client disconnects mid-stream."""

from __future__ import annotations

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
