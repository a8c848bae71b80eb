"""node_client without a node: LoadShard messages built from ShardLoad/ModelLoad, deadlines from the config, and a
ForwardStream over a fake bidi call (replies in write order, refusals, a broken stream fails what is pending and
tells its engine once, an ended one tells no one)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from coordinator.node_client import Deadlines, ForwardStream, ModelLoad, StageError
from protos import shard_pb2
from protos.config import CoordinatorConfig
from protos.data_structures import LayerRange


class FakeCall:
    """A bidi Forward call: writes are recorded; replies are pushed by the test; EOF ends it."""

    def __init__(self) -> None:
        self.written: list[shard_pb2.ForwardRequest] = []
        self.replies: asyncio.Queue[object] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: shard_pb2.ForwardRequest) -> None:
        self.written.append(request)

    async def read(self) -> object:
        return await self.replies.get()

    def cancel(self) -> None:
        self.cancelled = True


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    def Forward(self) -> FakeCall:  # noqa: N802 - the gRPC method's name
        self.calls.append(FakeCall())
        return self.calls[-1]


def test_load_messages_and_deadlines() -> None:
    load = ModelLoad("m", "/cache/m", "float16", "cpu", 512, max_sequences=8).shard(LayerRange(2, 5), dry_run=True)
    msg = load.to_proto()
    assert (msg.model, msg.model_path, msg.dtype, msg.device, msg.kv_cache_tokens, msg.max_sequences) == \
        ("m", "/cache/m", "float16", "cpu", 512, 8)
    assert (msg.layers.start, msg.layers.end, msg.dry_run) == (2, 5, True)
    d = Deadlines.from_config(CoordinatorConfig(rpc_timeout_s=7, load_timeout_s=70, health_timeout_s=2))
    assert (d.rpc_s, d.load_s, d.health_s) == (7, 70, 2)


def test_replies_match_writes_in_order_and_a_refusal_fails_alone() -> None:
    async def scenario() -> None:
        stub = FakeStub()
        stream = ForwardStream(stub, "n1", "m", timeout_s=60)  # type: ignore[arg-type]
        first = await stream.send(shard_pb2.ForwardRequest(batch_id=1))
        second = await stream.send(shard_pb2.ForwardRequest(batch_id=2))
        call = stub.calls[0]
        assert len(stub.calls) == 1 and [w.batch_id for w in call.written] == [1, 2]  # one stream, opened lazily
        call.replies.put_nowait(shard_pb2.ForwardResponse(batch_id=1, next_token_ids=[5]))
        call.replies.put_nowait(shard_pb2.ForwardResponse(batch_id=2, error_code="INVALID_ARGUMENT",
                                                          error_message="bad batch"))
        assert list((await first).next_token_ids) == [5]
        with pytest.raises(StageError) as refused:
            await second
        assert not refused.value.stream_lost and refused.value.code == "INVALID_ARGUMENT"
        stream.end()

    asyncio.run(scenario())


def test_a_broken_stream_fails_what_is_pending_and_tells_its_engine_once() -> None:
    async def scenario() -> None:
        stub = FakeStub()
        stream = ForwardStream(stub, "n1", "m", timeout_s=60)  # type: ignore[arg-type]
        lost: list[str] = []
        stream.on_stream_lost = lambda s, why: lost.append(why)
        pending = await stream.send(shard_pb2.ForwardRequest(batch_id=1))
        stub.calls[0].replies.put_nowait(grpc.aio.EOF)
        with pytest.raises(StageError) as broken:
            await pending
        assert broken.value.stream_lost and lost == ["the node closed the Forward stream"]
        assert stub.calls[0].cancelled
        stream.drop("again")  # nothing open: nothing to tell
        again = await stream.send(shard_pb2.ForwardRequest(batch_id=2))  # a new stream
        assert len(stub.calls) == 2
        stream.end()  # on purpose: what is pending fails, and no one is told
        with pytest.raises(StageError):
            await again
        assert lost == ["the node closed the Forward stream"]

    asyncio.run(scenario())
