"""One model's bidi Forward stream to one shard node (``ForwardStream``), on the node's shared channel, and the
error a stage's failure raises (``StageError``). Replies are matched to requests by batch id; a micro-batch sent
without wanting a reply may be ``watch``ed (the node reports its failure). If the stream breaks, every pending and
watched micro-batch fails with ``StageError(stream_lost=True)`` and ``on_stream_lost`` tells the model's engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from protos import shard_pb2, shard_pb2_grpc

logger = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage could not run a micro-batch. ``stream_lost`` means its KV caches are gone too."""

    def __init__(self, node_id: str, code: str, message: str, stream_lost: bool) -> None:
        super().__init__(f"node {node_id}: {code}: {message}")
        self.node_id, self.code, self.message, self.stream_lost = node_id, code, message, stream_lost


StreamLost = Callable[["ForwardStream", str], None]


class ForwardStream:
    """One model's bidi Forward stream to one node, on the node's shared channel."""

    def __init__(self, stub: shard_pb2_grpc.ShardNodeStub, node_id: str, model: str, timeout_s: float) -> None:
        self.node_id, self.model, self.timeout_s = node_id, model, timeout_s
        self.on_stream_lost: StreamLost | None = None  # the stream carried micro-batches and broke
        self._stub = stub
        self._used = False  # the current stream carried a micro-batch
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[shard_pb2.ForwardResponse]] = {}  # batch id -> its reply
        self._watched: dict[int, asyncio.Future[shard_pb2.ForwardResponse]] = {}  # batch id -> a failure report
        self._write_lock = asyncio.Lock()

    async def send(self, request: shard_pb2.ForwardRequest) -> Awaitable[shard_pb2.ForwardResponse]:
        """Writes one micro-batch; returns an awaitable of its reply."""
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        self._pending[request.batch_id] = fut
        await self._write(request, open_stream=True)
        return self._reply(fut)

    def watch(self, batch_id: int) -> asyncio.Future[shard_pb2.ForwardResponse]:
        """A future of the failure report of a micro-batch sent with ``post`` (or of the stream breaking); call
        before posting it, and ``unwatch`` it once the micro-batch is done."""
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        self._watched[batch_id] = fut
        return fut

    def unwatch(self, batch_id: int) -> None:
        fut = self._watched.pop(batch_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def post(self, request: shard_pb2.ForwardRequest) -> None:
        """Writes a micro-batch that wants no reply (``report_errors_only``)."""
        await self._write(request, open_stream=True)

    async def notify(self, request: shard_pb2.ForwardRequest) -> None:
        """Writes a message that gets no reply (``abandon``); on a stream that is not open, there is nothing to
        tell."""
        await self._write(request, open_stream=False)

    async def _write(self, request: shard_pb2.ForwardRequest, open_stream: bool) -> None:
        async with self._write_lock:
            if self._call is None:
                if not open_stream:
                    return
                self._call = self._stub.Forward()
                self._reader = asyncio.get_running_loop().create_task(self._read_replies(self._call))
            self._used = True
            try:
                await asyncio.wait_for(self._call.write(request), self.timeout_s)
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                self._break(f"sending a micro-batch failed: {e!r}")

    async def _reply(self, fut: asyncio.Future[shard_pb2.ForwardResponse]) -> shard_pb2.ForwardResponse:
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except TimeoutError:
            self._break(f"no reply within the {self.timeout_s:.0f} s deadline")
            reply = await fut  # raises the StageError set by _break
        if reply.error_code:
            raise StageError(reply.error_node or self.node_id, reply.error_code, reply.error_message,
                             stream_lost=False)
        return reply

    async def _read_replies(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    self._break("the node closed the Forward stream")
                    return
                fut = self._pending.pop(reply.batch_id, None) or self._watched.pop(reply.batch_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except grpc.aio.AioRpcError as e:
            self._break(f"{e.code().name}: {e.details()}")
        except asyncio.CancelledError:
            pass

    def _break(self, why: str, notify: bool = True) -> None:
        """Fails every pending micro-batch and drops the stream (the node frees its caches)."""
        if self._call is None:
            return
        logger.warning("stage %s of %s lost its Forward stream: %s", self.node_id, self.model, why)
        call, self._call = self._call, None
        used, self._used = self._used, False
        call.cancel()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        waiting = [*self._pending.values(), *self._watched.values()]
        self._pending, self._watched = {}, {}
        for fut in waiting:
            if not fut.done():
                fut.set_exception(StageError(self.node_id, "UNAVAILABLE", why, stream_lost=True))
        if used and notify and self.on_stream_lost is not None:
            self.on_stream_lost(self, why)

    def drop(self, why: str) -> None:
        """Breaks the stream on purpose (the node is down or hung): its micro-batches fail over at once."""
        self._break(why)

    def end(self, why: str = "the shard is being unloaded") -> None:
        """Closes the stream on purpose, telling no one (nothing in flight, or shutting down)."""
        self._break(why, notify=False)
