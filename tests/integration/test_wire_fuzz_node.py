"""Malformed micro-batches thrown at a running shard node (property-based, hypothesis).

A real ``python -m shard_node`` holds two shards of a tiny seeded Llama: the first stage (token ids in) and a
middle stage (hidden states in). Every generated Forward frame (wrong dtype names, shapes that do not match the
byte count, negative or huge dimensions, positions past the cache, unknown or duplicate sequence ids, unknown
models...) must be answered within its deadline, on a stream that stays usable, with a gRPC status name and a
message; the node must stay healthy, keep its memory, and still compute a valid batch afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos import common_pb2, shard_pb2, shard_pb2_grpc, tensors, wire
from protos.data_structures import LayerRange
from tests.conftest import ROOT, free_port, make_tiny_model
from tests.integration.helpers import node_info, stop_process

pytestmark = pytest.mark.cluster

FIRST, MIDDLE = "fuzz-first", "fuzz-middle"
HIDDEN = 64  # make_tiny_model's hidden size
KV_TOKENS = 512
REFUSALS = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[str]:
    work = tmp_path_factory.mktemp("wire-fuzz")
    model_dir = make_tiny_model("llama", work / "tiny", smol_dir, num_layers=3, seed=7)
    port = free_port()
    log = open(work / "node.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "shard_node", "--port", str(port), "--node-id", "fuzz",
                             "--threads", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = shard_pb2_grpc.ShardNodeStub(channel)
            for name, layers in ((FIRST, LayerRange(0, 1)), (MIDDLE, LayerRange(1, 2))):
                stub.LoadShard(shard_pb2.LoadShardRequest(
                    model=name, model_path=str(model_dir), layers=wire.layer_range_to_proto(layers),
                    dtype="float32", device="cpu", kv_cache_tokens=KV_TOKENS), timeout=60)
        yield address
        assert proc.poll() is None, f"the node died:\n{(work / 'node.log').read_text()[-3000:]}"
    finally:
        stop_process(proc, log)


SEQ_IDS = st.sampled_from(["a", "b", "c", "", "x" * 300])
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
SMALL = st.integers(min_value=-3, max_value=40)
DIMS = st.one_of(st.integers(0, 80), st.integers(-3, -1), st.sampled_from([2**31, 2**40, 2**63 - 1]))
DTYPES = st.one_of(st.sampled_from(["float32", "float16", "bfloat16", "int64", "float64", "", "f32"]),
                   st.text(max_size=8))


@st.composite
def slices(draw: st.DrawFn) -> shard_pb2.SequenceSlice:
    return shard_pb2.SequenceSlice(
        seq_id=draw(SEQ_IDS), start_pos=draw(st.one_of(SMALL, INT32)), num_tokens=draw(st.one_of(SMALL, INT32)),
        max_total_tokens=draw(st.one_of(st.integers(-3, 600), INT32)), no_sample=draw(st.booleans()),
        recent_token_ids=draw(st.lists(INT32, max_size=3)))


@st.composite
def hidden_frames(draw: st.DrawFn, rows: int) -> common_pb2.Tensor:
    if draw(st.booleans()):  # a frame that is right except, maybe, for one thing
        shape = [rows, HIDDEN]
        dtype = "float32"
        nbytes = rows * HIDDEN * 4
    else:
        shape = draw(st.lists(DIMS, max_size=4))
        dtype = draw(DTYPES)
        nbytes = draw(st.integers(0, 4096))
    nbytes = draw(st.sampled_from([nbytes, max(0, nbytes - 1), nbytes + 4]))
    return common_pb2.Tensor(data=bytes(nbytes), shape=shape, dtype=dtype)


@st.composite
def frames(draw: st.DrawFn) -> shard_pb2.ForwardRequest:
    seqs = draw(st.lists(slices(), max_size=4))
    rows = sum(max(0, min(s.num_tokens, 40)) for s in seqs)
    model = draw(st.sampled_from([FIRST, MIDDLE, MIDDLE, "no-such-model", ""]))
    req = shard_pb2.ForwardRequest(model=model, batch_id=draw(st.integers(0, 2**64 - 1)), seqs=seqs,
                                   release_seq_ids=draw(st.lists(SEQ_IDS, max_size=2)),
                                   return_logits=draw(st.booleans()))
    if draw(st.booleans()):
        req.token_ids.extend(draw(st.lists(st.one_of(st.integers(0, 49151), INT32), max_size=rows + 2)))
    if draw(st.booleans()):
        req.hidden.CopyFrom(draw(hidden_frames(rows)))
    return req


def _valid_prefill(seq_id: str) -> shard_pb2.ForwardRequest:
    return shard_pb2.ForwardRequest(model=FIRST, batch_id=1, token_ids=[5, 6, 7], seqs=[
        shard_pb2.SequenceSlice(seq_id=seq_id, start_pos=0, num_tokens=3, max_total_tokens=8)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(frames(), min_size=1, max_size=4))
def test_malformed_frames_are_refused_with_a_reason(node: str, batch: list[shard_pb2.ForwardRequest]) -> None:
    with grpc.insecure_channel(node) as channel:
        stub = shard_pb2_grpc.ShardNodeStub(channel)
        # one good prefill first, so continuations of "a" find a cache on this stream
        replies = list(stub.Forward(iter([_valid_prefill("a"), *batch]), timeout=DEADLINE_S))
    assert len(replies) == len(batch) + 1
    assert not replies[0].error_code, replies[0].error_message
    for req, reply in zip(batch, replies[1:]):
        assert reply.batch_id == req.batch_id
        if reply.error_code:
            allowed = REFUSALS | ({"NOT_FOUND"} if req.model not in (FIRST, MIDDLE) else set())
            assert reply.error_code in allowed, (reply.error_code, reply.error_message, req)
            assert reply.error_message
            continue
        failed = {e.seq_id for e in reply.seq_errors}  # sequences that failed alone, each with a reason
        assert all(e.code in REFUSALS and e.message for e in reply.seq_errors), reply.seq_errors
        if req.model == MIDDLE:  # the batch was valid as a whole: the output has the rows of the others
            rows = sum(s.num_tokens for s in req.seqs if s.seq_id not in failed)
            assert list(tensors.tensor_from_proto(reply.hidden).shape) == [rows, HIDDEN]


def test_node_is_unharmed_after_the_fuzzing(node: str) -> None:
    """Runs after the property test (file order): healthy, nothing left in its caches, memory as it was."""
    info = node_info(node)
    assert all(s.num_sequences == 0 for s in info.shards), "closed streams must leave no cache behind"
    rss_before = info.rss_bytes
    with grpc.insecure_channel(node) as channel:
        stub = shard_pb2_grpc.ShardNodeStub(channel)
        (reply,) = list(stub.Forward(iter([_valid_prefill("after")]), timeout=DEADLINE_S))
    assert not reply.error_code
    assert list(tensors.tensor_from_proto(reply.hidden).shape) == [3, HIDDEN]
    time.sleep(0.2)
    assert node_info(node).rss_bytes < rss_before + 64 * 2**20
