"""A shard node driven directly over gRPC: caches live as long as the Forward stream that made them."""

from __future__ import annotations

import queue
import time

import grpc
import pytest

from protos import shard_pb2, shard_pb2_grpc, tensors
from tests.conftest import RunningCluster
from tests.integration.helpers import node_info

pytestmark = pytest.mark.cluster
MODEL = "tiny-llama-1way"  # the whole model on node1


def _sequences(address: str) -> int:
    return next(s.num_sequences for s in node_info(address).shards if s.model == MODEL)


def test_closing_the_stream_frees_its_caches(cluster: RunningCluster) -> None:
    address = cluster.node_address("node1")
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    with grpc.insecure_channel(address) as channel:
        stub = shard_pb2_grpc.ShardNodeStub(channel)
        replies = stub.Forward(requests(), timeout=60)
        outbox.put(shard_pb2.ForwardRequest(model=MODEL, batch_id=1, token_ids=[5, 6, 7], return_logits=True, seqs=[
            shard_pb2.SequenceSlice(seq_id="direct-1", start_pos=0, num_tokens=3, max_total_tokens=10)]))
        first = next(replies)
        assert not first.error_code, first.error_message
        assert len(first.next_token_ids) == 1
        assert list(tensors.tensor_from_proto(first.logits).shape) == [1, 49152]
        assert _sequences(address) == 1
        # a sequence with a bad position fails alone, with a reason, and leaves the stream and the cache as they were
        outbox.put(shard_pb2.ForwardRequest(model=MODEL, batch_id=2, token_ids=[1], seqs=[
            shard_pb2.SequenceSlice(seq_id="direct-1", start_pos=7, num_tokens=1)]))
        refused = next(replies)
        assert not refused.error_code and list(refused.next_token_ids) == [-1]
        (error,) = refused.seq_errors
        assert (error.seq_id, error.code) == ("direct-1", "FAILED_PRECONDITION")
        assert "holds 3 positions" in error.message
        outbox.put(shard_pb2.ForwardRequest(model=MODEL, batch_id=3, token_ids=[first.next_token_ids[0]], seqs=[
            shard_pb2.SequenceSlice(seq_id="direct-1", start_pos=3, num_tokens=1)]))
        assert not next(replies).error_code
        outbox.put(None)  # close the stream without releasing
        list(replies)
    deadline = time.monotonic() + 5
    while _sequences(address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sequences(address) == 0
