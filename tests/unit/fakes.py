"""Fakes shared by the unit tests: a gRPC servicer context whose abort raises, as grpc.aio's does; a fake shard
node behind the coordinator's NodeClient interface (``FakeNodeClient``, ``fake_clients``)."""

from __future__ import annotations

import asyncio
import copy
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from coordinator.node_client import Deadlines, NodeClients, ShardLoad, StageError
from coordinator.upkeep import Upkeep
from protos import common_pb2, shard_pb2, wire
from protos.config import NodeConfig
from protos.data_structures import KV_BLOCK_SIZE, PREFIX_MISSING, LayerRange


class Aborted(Exception):
    """What FakeContext.abort raises: the status code and details a servicer answered."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


# ----- a fake shard node, as the coordinator's NodeClient sees it -------------------------------------------------

VOCAB = 1000


COPY_PERIOD: list[int] = []  # a test sets one value P: the fake model then mostly repeats itself (see next_token)


def next_token(context: list[int]) -> int:
    """The fake model: the next token depends on the whole context (so a replay must rebuild it exactly). With
    COPY_PERIOD [P] it copies the token P back, except at every 11th position (drafts from the context are then
    right for a while and then wrong, as in a rewrite of a given text)."""
    if COPY_PERIOD and len(context) >= COPY_PERIOD[0] and len(context) % 11:
        return context[-COPY_PERIOD[0]]
    return (sum((i + 1) * t for i, t in enumerate(context)) * 7 + len(context)) % (VOCAB - 10) + 10


def verify(context: list[int], drafts: list[int], model: Callable[[list[int]], int] | None = None
           ) -> tuple[int, int]:
    """The last stage's check of the drafts that end ``context``: (how many the fake model agrees with, the token
    after them). ``model``: another fake model than ``next_token``."""
    model = model or next_token
    base = len(context) - len(drafts)
    accepted = 0
    while accepted < len(drafts) and model(context[:base + accepted]) == drafts[accepted]:
        accepted += 1
    return accepted, model(context[:base + accepted])


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeNetwork:
    """What fake nodes hand each other with shard-to-shard forwarding: HandoffRequests by (pipeline_id, batch_id,
    receiver address)."""

    def __init__(self) -> None:
        self.slots: dict[tuple[str, int, str], asyncio.Future[shard_pb2.HandoffRequest]] = {}

    def slot(self, request: shard_pb2.ForwardRequest, receiver: str) -> asyncio.Future[shard_pb2.HandoffRequest]:
        key = (request.pipeline_id, request.batch_id, receiver)
        if key not in self.slots:
            self.slots[key] = asyncio.get_running_loop().create_future()
        return self.slots[key]

    def hand_on(self, request: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse, node_id: str,
                upstream: shard_pb2.HandoffRequest | None = None) -> None:
        """A stage with ``forward_to`` hands its output (or its failure) and its report to the next stage's node."""
        handoff = shard_pb2.HandoffRequest(pipeline_id=request.pipeline_id, batch_id=request.batch_id,
                                           from_node=node_id, hidden=reply.hidden)
        if upstream is not None:
            handoff.reports.extend(upstream.reports)
            handoff.dropped_seq_ids.extend(upstream.dropped_seq_ids)
        if reply.error_code:
            handoff.error, handoff.error_code = reply.error_message, reply.error_code
            handoff.error_node = reply.error_node or node_id
        handoff.dropped_seq_ids.extend(e.seq_id for e in reply.seq_errors)
        handoff.reports.add(node_id=node_id, forward_seconds=reply.forward_seconds, seq_errors=reply.seq_errors,
                            handoff_bytes=len(reply.hidden.data))
        reply.ClearField("hidden")
        slot = self.slot(request, request.forward_to)
        if not slot.done():
            slot.set_result(handoff)

    def hand_tokens(self, request: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse) -> None:
        """Ring decode: the last stage hands the sampled tokens to the first stage, as micro-batch tokens_batch_id."""
        handoff = shard_pb2.HandoffRequest(pipeline_id=request.pipeline_id, batch_id=request.tokens_batch_id,
                                           token_ids=reply.next_token_ids,
                                           token_seq_ids=[s.seq_id for s in request.seqs])
        if reply.error_code:
            handoff.error, handoff.error_code = reply.error_message, reply.error_code
        key = shard_pb2.ForwardRequest(pipeline_id=request.pipeline_id, batch_id=request.tokens_batch_id)
        slot = self.slot(key, request.tokens_to)
        if not slot.done():
            slot.set_result(handoff)

    def abandon(self, request: shard_pb2.ForwardRequest, receiver: str) -> None:
        slot = self.slot(request, receiver)
        if not slot.done():
            slot.set_result(shard_pb2.HandoffRequest(error="abandoned", error_code="ABORTED", error_node="fake"))


@dataclass
class Forwarded:
    """One micro-batch as a fake node received it."""

    batch_id: int
    seq_ids: list[str]
    release_seq_ids: list[str]
    in_flight: int = 0  # the coordinator's micro-batches in flight, as the request said
    token_ids: list[int] | None = None
    from_peer: bool = False  # shard-to-shard forwarding: its input comes from the previous stage's node
    forward_to: str = ""  # ... and its output goes to this node's address
    pipeline_id: str = ""
    tokens_from_peer: bool = False  # ring decode: its input tokens come from the previous step's last stage
    provisional: bool = False  # every slice is a draft model's provisional step
    seqs: list[shard_pb2.SequenceSlice] = field(default_factory=list)  # as sent


class FakeStream:
    """One model's Forward stream to a FakeNodeClient: runs micro-batches at once, in write order.

    Each stage keeps every sequence's tokens (its "KV cache"); tokens travel to later stages inside ``hidden`` (as
    int32 bytes), and the last stage answers ``next_token`` of the sequence's context."""

    def __init__(self, node: FakeNodeClient, model: str) -> None:
        self.node, self.model, self.node_id = node, model, node.node.id
        self.on_stream_lost: Callable[[Any, str], None] | None = None
        self.used = False
        self.watched: dict[int, asyncio.Future[shard_pb2.ForwardResponse]] = {}
        self.pending: list[asyncio.Future[shard_pb2.ForwardResponse]] = []  # replies not in yet (a drop fails them)

    async def send(self, request: shard_pb2.ForwardRequest) -> Awaitable[shard_pb2.ForwardResponse]:
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        fut.add_done_callback(self.pending.remove)
        await self._take(request, fut)
        return self._reply(fut)

    async def post(self, request: shard_pb2.ForwardRequest) -> None:
        """A micro-batch that wants no reply: a failure it cannot hand on goes to its watcher."""
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        await self._take(request, fut)

    def watch(self, batch_id: int) -> asyncio.Future[shard_pb2.ForwardResponse]:
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        self.watched[batch_id] = fut
        return fut

    def unwatch(self, batch_id: int) -> None:
        fut = self.watched.pop(batch_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _take(self, request: shard_pb2.ForwardRequest, fut: asyncio.Future[shard_pb2.ForwardResponse]) -> None:
        node = self.node
        if node.hold_next is not None:  # this write waits until the test lets it through
            gate, node.hold_next = node.hold_next, None
            await gate.wait()
        node.forwarded.append(Forwarded(request.batch_id, [s.seq_id for s in request.seqs],
                                        list(request.release_seq_ids), request.batches_in_flight,
                                        list(request.token_ids), request.hidden_from_peer, request.forward_to,
                                        request.pipeline_id, request.tokens_from_peer,
                                        bool(request.seqs) and all(s.provisional for s in request.seqs),
                                        [copy.deepcopy(s) for s in request.seqs]))
        self.used = True
        if node.lose_stream_at is not None and len(node.forwarded) >= node.lose_stream_at:
            node.lose_stream_at = None
            fut.set_exception(StageError(self.node_id, "UNAVAILABLE", "stream lost", stream_lost=True))
            self.drop("the fake node lost its stream")
        elif request.hidden_from_peer:  # runs once the previous stage's output is in
            asyncio.get_running_loop().create_task(self._run_handed(request, fut))
        elif request.tokens_from_peer:  # ring decode: runs once the previous step's tokens are in
            asyncio.get_running_loop().create_task(self._run_ring(request, fut))
        else:
            self._finish(request, self._run_or_refuse(request), fut)

    def _run_or_refuse(self, request: shard_pb2.ForwardRequest) -> shard_pb2.ForwardResponse:
        if self.node.refuse_next:
            self.node.refuse_next = False
            return shard_pb2.ForwardResponse(batch_id=request.batch_id, error_code="RESOURCE_EXHAUSTED",
                                             error_message="the fake node refuses this batch")
        return self.node.run(self.model, request)

    async def _run_ring(self, request: shard_pb2.ForwardRequest,
                        fut: asyncio.Future[shard_pb2.ForwardResponse]) -> None:
        handoff = await self.node.network.slot(request, self.node.node.address)
        sampled = dict(zip(handoff.token_seq_ids, handoff.token_ids))
        kept = shard_pb2.ForwardRequest()
        kept.CopyFrom(request)
        del kept.seqs[:]
        kept.seqs.extend(s for s in request.seqs if sampled.get(s.seq_id, -1) >= 0)
        kept.token_ids.extend(sampled[s.seq_id] for s in kept.seqs)
        if handoff.error:
            reply = shard_pb2.ForwardResponse(batch_id=request.batch_id, error_code=handoff.error_code,
                                              error_message=handoff.error, error_node="fake")
        else:
            reply = self._run_or_refuse(kept)
        dropped = shard_pb2.HandoffRequest(dropped_seq_ids=[s.seq_id for s in request.seqs if s not in kept.seqs])
        self._finish(request, reply, fut, dropped)

    def _finish(self, request: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse,
                fut: asyncio.Future[shard_pb2.ForwardResponse], upstream: shard_pb2.HandoffRequest | None = None
                ) -> None:
        if request.tokens_to:
            self.node.network.hand_tokens(request, reply)
        if request.forward_to:
            self.node.network.hand_on(request, reply, self.node_id, upstream)
        elif upstream is not None:
            reply.upstream.extend(upstream.reports)
        if not fut.done():  # else failed with the stream
            fut.set_result(reply)

    async def _run_handed(self, request: shard_pb2.ForwardRequest,
                          fut: asyncio.Future[shard_pb2.ForwardResponse]) -> None:
        handoff = await self.node.network.slot(request, self.node.node.address)
        if handoff.error:
            reply = shard_pb2.ForwardResponse(batch_id=request.batch_id, error_code=handoff.error_code,
                                              error_message=handoff.error, error_node=handoff.error_node)
            self._finish(request, reply, fut, handoff)
            return
        dropped = set(handoff.dropped_seq_ids)
        kept = shard_pb2.ForwardRequest()
        kept.CopyFrom(request)
        del kept.seqs[:]
        kept.seqs.extend(s for s in request.seqs if s.seq_id not in dropped)
        kept.hidden.data = handoff.hidden.data
        reply = self._run_or_refuse(kept)
        if not request.forward_to and not reply.error_code:  # the last stage: one token per slice it was sent
            for field, none in ((reply.next_token_ids, -1), (reply.accepted_drafts, 0)):
                ran = iter(list(field))
                values = [none if s.seq_id in dropped else next(ran) for s in request.seqs]
                del field[:]
                field.extend(values)
        self._finish(request, reply, fut, handoff)

    async def notify(self, request: shard_pb2.ForwardRequest) -> None:
        if request.abandon:
            self.node.network.abandon(request, self.node.node.address)

    async def _reply(self, fut: asyncio.Future[shard_pb2.ForwardResponse]) -> shard_pb2.ForwardResponse:
        reply = await fut
        if reply.error_code:
            raise StageError(reply.error_node or self.node_id, reply.error_code, reply.error_message,
                             stream_lost=False)
        return reply

    def drop(self, why: str) -> None:
        self.node.caches.pop(self.model, None)  # a node frees every cache of a broken stream
        for fut in [*self.pending, *self.watched.values()]:
            if not fut.done():
                fut.set_exception(StageError(self.node_id, "UNAVAILABLE", why, stream_lost=True))
        self.watched.clear()
        if self.used and self.on_stream_lost is not None:
            self.used = False
            self.on_stream_lost(self, why)
        self.used = False

    def end(self, why: str = "") -> None:
        self.node.caches.pop(self.model, None)
        self.used = False


@dataclass
class FakeShard:
    layers: LayerRange
    kv_capacity_tokens: int


class FakeNodeClient:
    """A shard node behind the NodeClient interface: Info, LoadShard, UnloadShard, Release and Forward, no process.

    Tell it to fail: ``reachable = False`` (every RPC fails UNAVAILABLE), ``serving = False`` (health NOT_SERVING),
    ``fail_rows`` (seq_ids that fail alone), ``refuse_next`` (the next batch is refused), ``lose_stream_at`` (the
    stream breaks on that Forward write, counted over the node's life), ``hold_next`` (the next write waits)."""

    def __init__(self, node: NodeConfig, deadlines: Deadlines | None = None, num_layers: int = 3,
                 layer_bytes: int = 1000, kv_bytes: int = 100, network: FakeNetwork | None = None) -> None:
        self.network = network or FakeNetwork()  # shared by the nodes of one pool (shard-to-shard forwarding)
        self.node, self.deadlines, self.num_layers = node, deadlines or Deadlines(), num_layers  # the model's layers
        self.layer_bytes, self.kv_bytes = layer_bytes, kv_bytes
        self.reachable, self.serving = True, True
        self.speed = 1.0  # its profile's speed (1: 1 ms per layer and row)
        self.profiles: list[ShardLoad] = []  # Profile calls
        self.link_round_trip_s = 0.0
        self.link_rtt: dict[str, float | None] = {}  # address -> its round trip there (MeasureLinks; None: unreachable)
        self.links_measured: list[list[str]] = []
        self.fail_rows: set[str] = set()
        self.refuse_next = False
        self.lose_stream_at: int | None = None
        self.hold_next: asyncio.Event | None = None  # the next Forward write waits for this event
        self.shards: dict[str, FakeShard] = {}
        self.caches: dict[str, dict[str, list[int]]] = {}  # model -> seq_id -> tokens it holds
        self.prefix: dict[str, dict[int, list[int]]] = {}  # model -> prefix cache: block hash -> the block's tokens
        self.draft_floors: dict[str, dict[str, int]] = {}  # model -> seq_id -> where its unverified drafts start
        self.model: Callable[[list[int]], int] | None = None  # the fake model it runs (None: next_token)
        self.forwarded: list[Forwarded] = []
        self.released: list[str] = []  # seq_ids freed by Release calls
        self.loads: list[ShardLoad] = []
        self.unloaded: list[str] = []
        self.streams: dict[str, FakeStream] = {}
        self.closed = False

    @property
    def node_id(self) -> str:
        return self.node.id

    def _check(self) -> None:
        if not self.reachable:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"fake node {self.node.id} is unreachable")

    async def check_health(self) -> bool:
        self._check()
        return self.serving

    def take_round_trip(self) -> float | None:
        return None

    async def profile(self, load: ShardLoad) -> shard_pb2.NodeProfile:
        """A compute-bound node (time in proportion to the rows): 1 ms per layer and row, over ``speed``."""
        self._check()
        self.profiles.append(load)
        per_row = 1e-3 / self.speed
        times = [shard_pb2.RowsTime(rows=r, seconds=r * per_row) for r in (1, 8, 32)]
        return shard_pb2.NodeProfile(node_id=self.node.id, model=load.model, decode=times, head=times,
                                     prefill_token_seconds=per_row, threads=1, measured_seconds=0.01)

    async def measure_links(self, addresses: list[str], samples: int = 5) -> list[shard_pb2.LinkTime]:
        """Its round trip to each address: ``link_rtt`` (address -> seconds; None: unreachable), else 0.1 ms."""
        self._check()
        self.links_measured.append(list(addresses))
        rtts = {a: self.link_rtt.get(a, 1e-4) for a in addresses}
        return [shard_pb2.LinkTime(address=a, rtt_seconds=rtt or 0.0, error="" if rtt is not None else "unreachable")
                for a, rtt in rtts.items()]

    async def info(self, timeout_s: float | None = None) -> shard_pb2.NodeInfo:
        self._check()
        info = shard_pb2.NodeInfo(node_id=self.node.id, rss_bytes=1, cpu_count=1)
        for model, shard in self.shards.items():
            info.shards.add(model=model, layers=wire.layer_range_to_proto(shard.layers),
                            kv_capacity_tokens=shard.kv_capacity_tokens,
                            kv_used_tokens=sum(len(c) for c in self.caches.get(model, {}).values()))
        if self.node.memory_mb:
            info.memory_budget_bytes = self.node.memory_mb * 2**20
            info.memory_used_bytes = sum(self._bytes(s.layers) for s in self.shards.values())
        return info

    def _bytes(self, layers: LayerRange) -> int:
        return (layers.end - layers.start) * self.layer_bytes

    async def load(self, load: ShardLoad) -> shard_pb2.ShardInfo:
        self._check()
        self.loads.append(load)
        n = load.layers.end - load.layers.start
        info = shard_pb2.ShardInfo(model=load.model, layers=wire.layer_range_to_proto(load.layers),
                                   weight_bytes=self._bytes(load.layers), layer_weight_bytes=self._bytes(load.layers),
                                   kv_capacity_tokens=load.kv_cache_tokens, kv_capacity_bytes=self.kv_bytes * n)
        if not load.dry_run:
            self.shards[load.model] = FakeShard(load.layers, load.kv_cache_tokens)
        return info

    async def unload(self, model: str) -> bool:
        self._check()
        self.unloaded.append(model)
        return self.shards.pop(model, None) is not None

    async def release(self, model: str, upkeep: Upkeep) -> int:
        self._check()
        self._prefix_upkeep(model, upkeep.keep, upkeep.evict)
        self.released.extend(upkeep.release)
        cache = self.caches.get(model, {})
        return sum(cache.pop(s, None) is not None for s in upkeep.release)

    def _prefix_upkeep(self, model: str, keep: Iterable[shard_pb2.KeepBlocks], evict: Iterable[int]) -> None:
        cache, prefix = self.caches.get(model, {}), self.prefix.setdefault(model, {})
        for k in keep:
            held = cache.get(k.seq_id, [])
            for i, h in enumerate(k.hashes, start=k.first_block):
                if (i + 1) * KV_BLOCK_SIZE <= len(held):
                    prefix.setdefault(h, held[i * KV_BLOCK_SIZE:(i + 1) * KV_BLOCK_SIZE])
        for h in evict:
            prefix.pop(h, None)

    def stream(self, model: str) -> FakeStream:
        return self.streams.setdefault(model, FakeStream(self, model))

    def close_stream(self, model: str) -> None:
        stream = self.streams.pop(model, None)
        if stream is not None:
            stream.end()

    async def close(self) -> None:
        self.closed = True

    def run(self, model: str, request: shard_pb2.ForwardRequest) -> shard_pb2.ForwardResponse:
        """One micro-batch: releases first, then every row extends its sequence's cache; the last stage samples."""
        cache = self.caches.setdefault(model, {})
        self._prefix_upkeep(model, request.keep_blocks, request.evict_block_hashes)
        for sid in request.release_seq_ids:
            cache.pop(sid, None)
        shard = self.shards.get(model)
        last = shard is not None and shard.layers.end >= self.num_layers
        hidden = request.hidden.data
        tokens = list(request.token_ids) or list(struct.unpack(f"<{len(hidden) // 4}i", hidden))
        reply = shard_pb2.ForwardResponse(batch_id=request.batch_id, forward_seconds=0.001)
        kept: list[int] = []
        offset = 0
        floors = self.draft_floors.setdefault(model, {})
        for s in request.seqs:
            rows, offset = tokens[offset:offset + s.num_tokens], offset + s.num_tokens
            held = cache.get(s.seq_id, []) if s.start_pos > 0 else []
            if s.prefix_hashes:
                blocks = [self.prefix.get(model, {}).get(h) for h in s.prefix_hashes]
                if any(b is None for b in blocks):
                    reply.seq_errors.add(seq_id=s.seq_id, code="ABORTED", message=f"block is {PREFIX_MISSING}")
                    reply.next_token_ids.append(-1)
                    reply.accepted_drafts.append(0)
                    continue
                held = [t for b in blocks for t in b or []]
            rewinds = floors.get(s.seq_id, len(held)) <= s.start_pos <= len(held)  # over unverified drafts
            if s.seq_id in self.fail_rows or not (len(held) == s.start_pos or rewinds):
                why = "chosen to fail" if s.seq_id in self.fail_rows else f"position {s.start_pos} != {len(held)}"
                reply.seq_errors.add(seq_id=s.seq_id, code="INVALID_ARGUMENT", message=why)
                reply.next_token_ids.append(-1)
                reply.accepted_drafts.append(0)
                continue
            cache[s.seq_id] = context = held[:s.start_pos] + [int(t) for t in rows]
            floor = min(floors.get(s.seq_id, s.start_pos), s.start_pos) if s.provisional else len(context)
            floors[s.seq_id] = floor - len(s.draft_token_ids)
            kept.extend(int(t) for t in rows)
            accepted, token = verify(context, list(s.draft_token_ids), self.model)
            reply.next_token_ids.append(-1 if s.no_sample else token)
            reply.accepted_drafts.append(accepted)
        if not last:
            del reply.next_token_ids[:]
            del reply.accepted_drafts[:]
            reply.hidden.CopyFrom(common_pb2.Tensor(dtype="int32", shape=[len(kept), 1],
                                                    data=struct.pack(f"<{len(kept)}i", *kept)))
        return reply


def fake_clients(node_ids: tuple[str, ...] = ("n1", "n2", "n3"), num_layers: int = 3, **kw: Any) -> NodeClients:
    """A NodeClients pool of fake nodes 127.0.0.1:47200+i (a model of ``num_layers`` layers)."""

    network = FakeNetwork()

    def make(node: NodeConfig, deadlines: Deadlines) -> Any:
        return FakeNodeClient(node, deadlines, num_layers, network=network, **kw)

    nodes = [NodeConfig(n, f"127.0.0.1:{47200 + i}") for i, n in enumerate(node_ids)]
    return NodeClients(Deadlines(), nodes, make=make)
