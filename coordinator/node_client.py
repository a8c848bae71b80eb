"""Every RPC the coordinator sends to a shard node: one ``NodeClient`` (one gRPC channel) per node, shared by
every model, owned by ``NodeClients`` (the registry's pool, keyed by node id).

A node client answers the health check, Info, LoadShard (real loads and the dry-run loads that measure a model),
UnloadShard and Release, and holds one Forward stream per model (``ForwardStream``). Every call has a deadline,
all from one ``Deadlines``. A Forward stream is opened lazily and its replies are matched to requests by batch id
(a micro-batch sent without wanting a reply may still be ``watch``ed: the node reports its failure); if it
breaks, every pending and watched micro-batch fails with ``StageError`` and ``on_stream_lost`` tells its engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import security, shard_pb2, shard_pb2_grpc, wire
from protos.config import CoordinatorConfig, NodeConfig
from protos.data_structures import LayerRange
from protos.model_spec import DEFAULT_QUANTIZATION
from protos.runtime import GRPC_OPTIONS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deadlines:
    """Every RPC deadline of the coordinator's node calls, in seconds."""

    rpc_s: float = 60.0  # one micro-batch on one node, Release, UnloadShard
    load_s: float = 600.0  # LoadShard
    health_s: float = 3.0  # one health poll (health check + Info)
    info_s: float = 10.0  # Info outside the polls
    measure_s: float = 30.0  # one dry-run LoadShard (measuring a model's size)

    @classmethod
    def from_config(cls, config: CoordinatorConfig) -> Deadlines:
        return cls(rpc_s=config.rpc_timeout_s, load_s=config.load_timeout_s, health_s=config.health_timeout_s)


@dataclass(frozen=True)
class ShardLoad:
    """One LoadShard: a model's layer range on a node (``dry_run``: only measured, nothing kept)."""

    model: str
    model_path: str
    layers: LayerRange
    dtype: str
    device: str
    kv_cache_tokens: int
    max_sequences: int = 0  # per shard (0 = the node's default)
    dry_run: bool = False
    quantization: str = DEFAULT_QUANTIZATION

    def to_proto(self) -> shard_pb2.LoadShardRequest:
        return shard_pb2.LoadShardRequest(
            model=self.model, model_path=self.model_path, layers=wire.layer_range_to_proto(self.layers),
            dtype=self.dtype, device=self.device, kv_cache_tokens=self.kv_cache_tokens,
            max_sequences=self.max_sequences, dry_run=self.dry_run, quantization=self.quantization)


@dataclass(frozen=True)
class ModelLoad:
    """What every LoadShard of one model shares; ``shard`` adds a replica's layers."""

    model: str
    model_path: str
    dtype: str
    device: str
    kv_cache_tokens: int
    max_sequences: int = 0  # per shard (0 = the node's default)
    quantization: str = DEFAULT_QUANTIZATION

    def shard(self, layers: LayerRange, dry_run: bool = False) -> ShardLoad:
        return ShardLoad(self.model, self.model_path, layers, self.dtype, self.device, self.kv_cache_tokens,
                         self.max_sequences, dry_run, self.quantization)


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


class NodeClient:
    """One node: one channel, every RPC to it, one Forward stream per model."""

    def __init__(self, node: NodeConfig, deadlines: Deadlines) -> None:
        self.node, self.deadlines = node, deadlines
        self.channel = security.aio_channel(node.address, GRPC_OPTIONS)
        self.stub = shard_pb2_grpc.ShardNodeStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._streams: dict[str, ForwardStream] = {}
        self._round_trip_s: float | None = None

    @property
    def node_id(self) -> str:
        return self.node.id

    async def check_health(self) -> bool:
        """True when the node's health service says SERVING (False: NOT_SERVING, i.e. draining). Its round trip
        is kept for ``take_round_trip``."""
        started = time.perf_counter()
        reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=self.deadlines.health_s)
        self._round_trip_s = time.perf_counter() - started
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def take_round_trip(self) -> float | None:
        """The coordinator's round trip to this node as the last health check measured it, once (None until the
        next check): links the micro-batches themselves do not time (forwarding: the first stage's)."""
        rtt, self._round_trip_s = self._round_trip_s, None
        return rtt

    async def info(self, timeout_s: float | None = None) -> shard_pb2.NodeInfo:
        return await self.stub.Info(shard_pb2.InfoRequest(), timeout=timeout_s or self.deadlines.info_s)

    async def load(self, load: ShardLoad) -> shard_pb2.ShardInfo:
        """LoadShard; a real load waits for the node to come up, a dry run fails at once when it is not."""
        timeout = self.deadlines.measure_s if load.dry_run else self.deadlines.load_s
        return await self.stub.LoadShard(load.to_proto(), timeout=timeout, wait_for_ready=not load.dry_run)

    async def unload(self, model: str) -> bool:
        reply = await self.stub.UnloadShard(shard_pb2.UnloadShardRequest(model=model), timeout=self.deadlines.rpc_s)
        return reply.unloaded

    async def release(self, model: str, seq_ids: list[str]) -> int:
        reply = await self.stub.Release(shard_pb2.ReleaseRequest(model=model, seq_ids=seq_ids),
                                        timeout=self.deadlines.rpc_s)
        return reply.released

    def stream(self, model: str) -> ForwardStream:
        """The Forward stream of ``model`` (one per model, opened at its first micro-batch)."""
        if model not in self._streams:
            self._streams[model] = ForwardStream(self.stub, self.node.id, model, self.deadlines.rpc_s)
        return self._streams[model]

    def close_stream(self, model: str) -> None:
        """Ends and forgets ``model``'s stream (the model leaves this node)."""
        stream = self._streams.pop(model, None)
        if stream is not None:
            stream.end()

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.end("coordinator shutting down")
        self._streams.clear()
        await self.channel.close()


class NodeClients:
    """The pool of node clients, keyed by node id (the registry owns it)."""

    def __init__(self, deadlines: Deadlines, nodes: Iterable[NodeConfig] = (),
                 make: Callable[[NodeConfig, Deadlines], NodeClient] = NodeClient) -> None:
        self.deadlines = deadlines
        self._make = make  # tests give a fake
        self._clients: dict[str, NodeClient] = {}
        for node in nodes:
            self.add(node)

    def add(self, node: NodeConfig) -> NodeClient:
        if node.id not in self._clients:
            self._clients[node.id] = self._make(node, self.deadlines)
        return self._clients[node.id]

    def __getitem__(self, node_id: str) -> NodeClient:
        return self._clients[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._clients

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    @property
    def nodes(self) -> dict[str, NodeConfig]:
        return {node_id: c.node for node_id, c in self._clients.items()}

    async def remove(self, node_id: str) -> None:
        client = self._clients.pop(node_id, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for node_id in list(self._clients):
            await self.remove(node_id)
