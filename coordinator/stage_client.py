"""One pipeline stage (a node's shard of one model): LoadShard, a Forward stream, Release, Info.

Every call has a deadline. The Forward stream is opened lazily and replies are matched to requests
in order; if the stream breaks, every pending micro-batch fails with StageError.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

import grpc

from protos import security, shard_pb2, shard_pb2_grpc
from protos.config import NodeConfig
from protos.runtime import GRPC_OPTIONS

logger = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A stage could not run a micro-batch. ``stream_lost`` means its KV caches are gone too."""

    def __init__(self, node_id: str, code: str, message: str, stream_lost: bool) -> None:
        super().__init__(f"node {node_id}: {code}: {message}")
        self.node_id, self.code, self.message, self.stream_lost = node_id, code, message, stream_lost


class StageClient:
    def __init__(self, node: NodeConfig, model: str, rpc_timeout_s: float) -> None:
        self.node = node
        self.model = model
        self.rpc_timeout_s = rpc_timeout_s
        # Called when a stream that carried micro-batches breaks: the node freed every KV cache it made.
        self.on_stream_lost: Callable[[StageClient, str], None] | None = None
        self._used = False  # the current stream carried a micro-batch
        self.channel = security.aio_channel(node.address, GRPC_OPTIONS)
        self.stub = shard_pb2_grpc.ShardNodeStub(self.channel)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[shard_pb2.ForwardResponse]] = collections.deque()
        self._write_lock = asyncio.Lock()

    async def load(self, request: shard_pb2.LoadShardRequest, timeout_s: float) -> shard_pb2.ShardInfo:
        return await self.stub.LoadShard(request, timeout=timeout_s, wait_for_ready=True)

    async def unload(self) -> bool:
        reply = await self.stub.UnloadShard(shard_pb2.UnloadShardRequest(model=self.model), timeout=self.rpc_timeout_s)
        return reply.unloaded

    async def info(self, timeout_s: float = 2.0) -> shard_pb2.NodeInfo:
        return await self.stub.Info(shard_pb2.InfoRequest(), timeout=timeout_s)

    async def release(self, seq_ids: list[str]) -> int:
        reply = await self.stub.Release(shard_pb2.ReleaseRequest(model=self.model, seq_ids=seq_ids),
                                        timeout=self.rpc_timeout_s)
        return reply.released

    async def send(self, request: shard_pb2.ForwardRequest) -> Awaitable[shard_pb2.ForwardResponse]:
        """Writes one micro-batch on the Forward stream; returns an awaitable of its reply.

        Micro-batches are answered in the order they were written, so several can be in flight.
        """
        loop = asyncio.get_running_loop()
        async with self._write_lock:
            if self._call is None:
                self._open_stream()
            assert self._call is not None
            fut: asyncio.Future[shard_pb2.ForwardResponse] = loop.create_future()
            self._pending.append(fut)
            self._used = True
            try:
                await asyncio.wait_for(self._call.write(request), self.rpc_timeout_s)
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                self._break(f"sending a micro-batch failed: {e!r}")
        return self._reply(fut)

    async def _reply(self, fut: asyncio.Future[shard_pb2.ForwardResponse]) -> shard_pb2.ForwardResponse:
        try:
            reply = await asyncio.wait_for(asyncio.shield(fut), self.rpc_timeout_s)
        except TimeoutError:
            self._break(f"no reply within the {self.rpc_timeout_s:.0f} s deadline")
            reply = await fut  # raises the StageError set by _break
        if reply.error_code:
            raise StageError(self.node.id, reply.error_code, reply.error_message, stream_lost=False)
        return reply

    def _open_stream(self) -> None:
        self._call = self.stub.Forward()
        self._reader = asyncio.get_running_loop().create_task(self._read_replies(self._call))

    async def _read_replies(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    self._break("the node closed the Forward stream")
                    return
                if self._pending:
                    fut = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(reply)
        except grpc.aio.AioRpcError as e:
            self._break(f"{e.code().name}: {e.details()}")
        except asyncio.CancelledError:
            pass

    def _break(self, why: str, notify: bool = True) -> None:
        """Fails every pending micro-batch and drops the stream (the node frees its caches)."""
        if self._call is None:
            return
        logger.warning("stage %s of %s lost its Forward stream: %s", self.node.id, self.model, why)
        call, self._call = self._call, None
        used, self._used = self._used, False
        call.cancel()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(StageError(self.node.id, "UNAVAILABLE", why, stream_lost=True))
        if used and notify and self.on_stream_lost is not None:
            self.on_stream_lost(self, why)

    def drop_stream(self, why: str) -> None:
        """Breaks the stream on purpose (the node is down or hung): its micro-batches fail over at once."""
        self._break(why)

    def end_stream(self) -> None:
        """Closes the Forward stream on purpose, with nothing in flight (before an unload)."""
        self._break("the shard is being unloaded", notify=False)

    async def close(self) -> None:
        self._break("coordinator shutting down", notify=False)
        await self.channel.close()
