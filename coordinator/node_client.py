"""Every RPC the coordinator sends to a shard node: one ``NodeClient`` (one gRPC channel) per node, shared by
every model, owned by ``NodeClients`` (the registry's pool, keyed by node id).

A node client answers the health check, Info, LoadShard (real loads and the dry-run loads that measure a model),
UnloadShard and Release, and holds one Forward stream per model (``ForwardStream``). Every call has a deadline,
all from one ``Deadlines``. The stream and ``StageError`` live in coordinator/forward_stream.py.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.forward_stream import ForwardStream, StageError
from coordinator.upkeep import Upkeep

__all__ = ["Deadlines", "ForwardStream", "ModelLoad", "NodeClient", "NodeClients", "ShardLoad", "StageError"]
from protos import security, shard_pb2, shard_pb2_grpc, wire
from protos.config import CoordinatorConfig, NodeConfig
from protos.data_structures import LayerRange
from protos.model_spec import DEFAULT_QUANTIZATION
from protos.runtime import GRPC_OPTIONS

logger = logging.getLogger(__name__)
ROUND_TRIPS_KEPT = 20  # health checks whose round trips give a link's latency (their least)


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


class NodeClient:
    """One node: one channel, every RPC to it, one Forward stream per model."""

    def __init__(self, node: NodeConfig, deadlines: Deadlines) -> None:
        self.node, self.deadlines = node, deadlines
        self.channel = security.aio_channel(node.address, GRPC_OPTIONS)
        self.stub = shard_pb2_grpc.ShardNodeStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._streams: dict[str, ForwardStream] = {}
        self._round_trip_s: float | None = None
        self._recent_round_trips: deque[float] = deque(maxlen=ROUND_TRIPS_KEPT)

    @property
    def node_id(self) -> str:
        return self.node.id

    async def check_health(self) -> bool:
        """True when the node's health service says SERVING (False: NOT_SERVING, i.e. draining). Its round trip
        is kept for ``take_round_trip``."""
        started = time.perf_counter()
        reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=self.deadlines.health_s)
        self._round_trip_s = time.perf_counter() - started
        self._recent_round_trips.append(self._round_trip_s)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    @property
    def link_round_trip_s(self) -> float:
        """The link's latency: the least round trip of the recent health checks (a busy or CPU-throttled node
        answers some of them late; that is not the network). 0 before the first."""
        return min(self._recent_round_trips, default=0.0)

    def take_round_trip(self) -> float | None:
        """The coordinator's round trip to this node as the last health check measured it, once (None until the
        next check): links the micro-batches themselves do not time (forwarding: the first stage's)."""
        rtt, self._round_trip_s = self._round_trip_s, None
        return rtt

    async def profile(self, load: ShardLoad) -> shard_pb2.NodeProfile:
        """The node's speed for the model's shape and format (a few seconds of measuring on the node)."""
        return await self.stub.Profile(shard_pb2.ProfileRequest(shard=load.to_proto()), timeout=self.deadlines.load_s)

    async def measure_links(self, addresses: list[str], samples: int = 5) -> list[shard_pb2.LinkTime]:
        """The node's round trip to each of ``addresses`` (other nodes), as it measures it."""
        reply = await self.stub.MeasureLinks(shard_pb2.MeasureLinksRequest(addresses=addresses, samples=samples),
                                             timeout=5.0 + 2.0 * (samples + 1) * len(addresses))
        return list(reply.links)

    async def info(self, timeout_s: float | None = None) -> shard_pb2.NodeInfo:
        return await self.stub.Info(shard_pb2.InfoRequest(), timeout=timeout_s or self.deadlines.info_s)

    async def load(self, load: ShardLoad) -> shard_pb2.ShardInfo:
        """LoadShard; a real load waits for the node to come up, a dry run fails at once when it is not."""
        timeout = self.deadlines.measure_s if load.dry_run else self.deadlines.load_s
        return await self.stub.LoadShard(load.to_proto(), timeout=timeout, wait_for_ready=not load.dry_run)

    async def unload(self, model: str) -> bool:
        reply = await self.stub.UnloadShard(shard_pb2.UnloadShardRequest(model=model), timeout=self.deadlines.rpc_s)
        return reply.unloaded

    async def release(self, model: str, upkeep: Upkeep) -> int:
        """Releases sequences, after the prefix cache's keeps and evictions (coordinator/upkeep.py)."""
        request = shard_pb2.ReleaseRequest(model=model)
        upkeep.add_to(request)
        reply = await self.stub.Release(request, timeout=self.deadlines.rpc_s)
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


async def unload_shard(model: str, client: NodeClient) -> tuple[int, int]:
    """Unloads ``model``'s shard from a node; its RSS before and after (0 when it did not answer)."""
    before = after = 0
    client.close_stream(model)  # the node's stream handler holds the shard until its stream ends
    try:
        before = (await client.info()).rss_bytes
        await client.unload(model)
        after = (await client.info()).rss_bytes
    except grpc.aio.AioRpcError as e:
        logger.warning("unloading %s from %s failed: %s", model, client.node_id, e.details())
    return before, after
