"""Shard-to-shard forwarding between two real shard node servicers over gRPC (in this process): the first stage
hands its output to the second by Handoff and says nothing to the coordinator; the second answers with the token
transformers would pick and the first stage's report; a failure on the first stage reaches the coordinator
through the second, naming the first; and each wire dtype reaches the same token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from ops.ports import free_port
from protos import shard_pb2, shard_pb2_grpc, wire
from protos.data_structures import LayerRange, SamplingParams
from shard_node.service import ShardNodeServicer
from tests.unit.fakes import FakeContext
from tests.unit.shard_node.test_servicer import MODEL, PROMPT, greedy_tokens, tiny_dir  # noqa: F401 - fixtures

__all__ = ["greedy_tokens", "tiny_dir"]


def _load(node: ShardNodeServicer, model_dir: Path, start: int, end: int) -> None:
    request = shard_pb2.LoadShardRequest(model=MODEL, model_path=str(model_dir), dtype="float32", device="cpu",
                                         layers=wire.layer_range_to_proto(LayerRange(start, end)))
    asyncio.run(node.LoadShard(request, FakeContext()))


def _message(stage: int, batch_id: int, wire_dtype: str, forward_to: str = "") -> shard_pb2.ForwardRequest:
    seq = shard_pb2.SequenceSlice(seq_id="s1", start_pos=0, num_tokens=len(PROMPT), max_total_tokens=16,
                                  sampling=wire.sampling_to_proto(SamplingParams()))
    message = shard_pb2.ForwardRequest(model=MODEL, batch_id=batch_id, seqs=[seq], pipeline_id="pipe",
                                       wire_dtype=wire_dtype)
    if stage == 0:
        message.token_ids.extend(PROMPT)
        message.forward_to, message.forward_to_node, message.report_errors_only = forward_to, "second", True
    else:
        message.hidden_from_peer = True
    return message


async def _one(node: ShardNodeServicer, message: shard_pb2.ForwardRequest) -> list[shard_pb2.ForwardResponse]:
    async def once() -> AsyncIterator[shard_pb2.ForwardRequest]:
        yield message

    return [reply async for reply in node.Forward(once(), FakeContext())]


async def _through_both(first: ShardNodeServicer, second: ShardNodeServicer, batch_id: int, wire_dtype: str,
                        spoil: Callable[[shard_pb2.ForwardRequest], None] = lambda m: None,
                        ) -> tuple[list[shard_pb2.ForwardResponse], list[shard_pb2.ForwardResponse]]:
    """One micro-batch through both stages, the second served over gRPC; what each said to the coordinator."""
    server = grpc.aio.server()
    shard_pb2_grpc.add_ShardNodeServicer_to_server(second, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        waiting = asyncio.create_task(_one(second, _message(1, batch_id, wire_dtype)))  # its input comes later
        message = _message(0, batch_id, wire_dtype, address)
        spoil(message)
        said = await _one(first, message)
        return said, await asyncio.wait_for(waiting, 60)
    finally:
        await first.context.peers.close()
        await server.stop(None)


@pytest.fixture
def two_nodes(tiny_dir: Path):  # noqa: ANN201, F811 - the fixture, and its generator
    first, second = ShardNodeServicer("first", 256), ShardNodeServicer("second", 256)
    _load(first, tiny_dir, 0, 1)
    _load(second, tiny_dir, 1, 2)
    yield first, second
    first.compute.shutdown(wait=True)
    second.compute.shutdown(wait=True)


@pytest.mark.parametrize("wire_dtype", ["", "float32", "bfloat16", "float16", "int8"])
def test_the_first_stage_hands_its_output_to_the_second_which_answers_for_both(
        two_nodes, greedy_tokens: list[int], wire_dtype: str) -> None:  # noqa: ANN001, F811
    first, second = two_nodes
    said, answered = asyncio.run(_through_both(first, second, 1, wire_dtype))
    assert said == []  # report_errors_only, and the handoff went through
    [reply] = answered
    assert not reply.error_code and list(reply.next_token_ids) == greedy_tokens[:1]
    [report] = reply.upstream
    assert report.node_id == "first" and report.forward_seconds > 0
    assert report.handoff_bytes == len(PROMPT) * 64 * {"": 4, "float32": 4, "bfloat16": 2, "float16": 2,
                                                       "int8": 1}[wire_dtype] + (len(PROMPT) * 4 if wire_dtype ==
                                                                                  "int8" else 0)


def test_a_failure_on_the_first_stage_is_reported_by_the_second_naming_the_first(
        two_nodes) -> None:  # noqa: ANN001
    first, second = two_nodes

    def spoil(message: shard_pb2.ForwardRequest) -> None:
        del message.token_ids[1:]  # fewer token ids than the slice says: the first stage refuses the batch

    said, answered = asyncio.run(_through_both(first, second, 1, "", spoil))
    [reply] = answered
    assert said == []  # the failure went on to the next stage, which reports it
    assert (reply.error_node, reply.error_code) == ("first", "INVALID_ARGUMENT") and "token_ids" in reply.error_message
