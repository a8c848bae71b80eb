"""A real shard node frees a KV cache its Forward stream left behind while the stream stays open (the coordinator
lost track of it), after limits.kv_idle_ttl_s, and counts it in /metrics. The TTL is set low through the config
(with coordinator.rpc_timeout_s below it, as the node requires); the test polls with a generous deadline."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from protos import shard_pb2, shard_pb2_grpc, wire
from protos.data_structures import LayerRange
from tests.conftest import ROOT, free_port, make_tiny_model
from tests.integration.helpers import node_info, stop_process

pytestmark = pytest.mark.cluster

MODEL = "tiny-ttl"
TTL_S = 3


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[tuple[str, int, Path]]:
    work = tmp_path_factory.mktemp("kv-ttl")
    model_dir = make_tiny_model("llama", work / MODEL, smol_dir, num_layers=2, seed=3)
    port, metrics_port = free_port(), free_port()
    config = {"model_name": MODEL, "model_cache_dir": str(work), "models": [{"name": MODEL, "source": str(model_dir)}],
              "nodes": [{"id": "ttl", "address": f"127.0.0.1:{port}", "metrics_port": metrics_port}],
              "coordinator": {"rpc_timeout_s": 1.0}, "limits": {"kv_idle_ttl_s": TTL_S}}
    (work / "config.json").write_text(json.dumps(config))
    log_path = work / "node.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "shard_node", "--config", str(work / "config.json"), "--node-id",
                             "ttl", "--threads", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            shard_pb2_grpc.ShardNodeStub(channel).LoadShard(shard_pb2.LoadShardRequest(
                model=MODEL, model_path=str(model_dir), layers=wire.layer_range_to_proto(LayerRange(0, 2)),
                dtype="float32", device="cpu", kv_cache_tokens=256), timeout=60)
        yield address, metrics_port, log_path
    finally:
        stop_process(proc, log)


def _sequences(address: str) -> int:
    return next(s.num_sequences for s in node_info(address).shards if s.model == MODEL)


def test_a_cache_left_behind_on_an_open_stream_is_reclaimed(node: tuple[str, int, Path]) -> None:
    address, metrics_port, log_path = node
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    def prefill(seq_id: str, batch_id: int) -> shard_pb2.ForwardResponse:
        outbox.put(shard_pb2.ForwardRequest(model=MODEL, batch_id=batch_id, token_ids=[5, 6, 7], seqs=[
            shard_pb2.SequenceSlice(seq_id=seq_id, start_pos=0, num_tokens=3, max_total_tokens=10)]))
        return next(replies)

    with grpc.insecure_channel(address) as channel:
        replies = shard_pb2_grpc.ShardNodeStub(channel).Forward(requests(), timeout=300)
        assert not prefill("lost", 1).error_code
        assert _sequences(address) == 1
        deadline = time.monotonic() + 120  # the stream stays open all along: only the TTL can free the cache
        while _sequences(address) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sequences(address) == 0, "the idle cache was never reclaimed"
        late = prefill("next", 2)  # the stream still serves
        assert not late.error_code, late.error_message
        outbox.put(None)
        list(replies)
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    counted = re.search(rf'shardline_node_kv_caches_reclaimed_total{{model_name="{MODEL}",node="ttl"}} (\S+)', text)
    assert counted and float(counted.group(1)) >= 1, text[-2000:]
    assert "freed 1 KV cache(s) no micro-batch used for 3 s" in log_path.read_text()
