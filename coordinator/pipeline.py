"""Runs micro-batches through a model's stages in layer order and returns the sampled tokens.

Hidden states travel stage to stage (``forwarding: direct``, coordinator/forwarding.py) or through the
coordinator (``star``: here, ``_stage``), in the model's ``wire_dtype``.

A model's layers are split into contiguous ranges (stage groups); each range is held by one or more
nodes (replicas). A micro-batch travels one *route*: one replica of every range. Several
micro-batches may be in flight at once (one per lane). Each replica receives them in the order they
were issued (a ticket taken when the micro-batch is issued), so a release piggybacked on micro-batch
n always reaches a replica before the prefill of a later micro-batch that may need the room it frees.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator import metrics
from coordinator.forwarding import COORDINATOR, RingStep, run_direct
from coordinator.node_client import ForwardStream, NodeClient, StageError
from coordinator.scheduler import MicroBatchPlan
from coordinator.step_result import StepResult, step_result
from coordinator.upkeep import Upkeep
from protos import shard_pb2, wire
from protos.data_structures import LayerRange
from protos.model_spec import DEFAULT_FORWARDING, DEFAULT_WIRE_DTYPE

logger = logging.getLogger(__name__)


class IssueOrder:
    """Tickets in issue order: ticket n may write to a replica only after tickets < n wrote (or gave up)."""

    def __init__(self) -> None:
        self._issued = 0
        self._next = 1
        self._passed: set[int] = set()
        self._changed = asyncio.Condition()

    def take(self) -> int:
        """A ticket; synchronous, so tickets follow the order in which micro-batches are issued."""
        self._issued += 1
        return self._issued

    async def wait_turn(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._next >= n)

    async def pass_turn(self, n: int) -> None:
        """Marks n as written (or as never coming), letting later tickets go."""
        async with self._changed:
            self._passed.add(n)
            while self._next in self._passed:
                self._passed.discard(self._next)
                self._next += 1
            self._changed.notify_all()


@dataclass(eq=False)
class Replica:
    """One node's shard of one layer range of a model."""

    client: NodeClient
    model: str
    layers: LayerRange
    kv_capacity_tokens: int = 0
    state: str = "loading"  # loading | ready | draining | down
    last_error: str = ""
    weight_bytes: int = 0
    retry_load_at: float = 0.0  # time.monotonic() before which a failed load is not tried again
    micro_batches: int = 0  # micro-batches it has run (the web UI shows activity from it)
    order: IssueOrder = field(default_factory=IssueOrder)
    pending_release: list[str] = field(default_factory=list)  # ride on the next micro-batch sent here,
    pending_keep: list[shard_pb2.KeepBlocks] = field(default_factory=list)  # with the prefix cache's keeps
    pending_evict: list[int] = field(default_factory=list)  # and evictions (coordinator/upkeep.py)

    @property
    def node_id(self) -> str:
        return self.client.node.id

    @property
    def stream(self) -> ForwardStream:
        """This model's Forward stream to the node."""
        return self.client.stream(self.model)

    @property
    def usable(self) -> bool:
        return self.state == "ready"

    def take_upkeep(self) -> Upkeep:
        taken = Upkeep(self.pending_release, self.pending_keep, self.pending_evict)
        self.pending_release, self.pending_keep, self.pending_evict = [], [], []
        return taken

    def owe_again(self, upkeep: Upkeep) -> None:
        """What was taken for a micro-batch that may not have arrived: sent again with the next one."""
        self.pending_release[:0] = upkeep.release
        self.pending_keep[:0] = upkeep.keep
        self.pending_evict[:0] = upkeep.evict

    def forget_upkeep(self) -> None:
        """The node lost its caches (or is gone): nothing is owed any more."""
        self.pending_release, self.pending_keep, self.pending_evict = [], [], []

    def describe(self) -> str:
        return f"node {self.node_id} ({self.client.node.address}, layers {self.layers.start}-{self.layers.end - 1} " \
               f"of {self.model})"


@dataclass(eq=False)
class StageGroup:
    """One contiguous layer range and the replicas that hold it."""

    layers: LayerRange
    replicas: list[Replica]

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.usable]


Route = tuple[Replica, ...]  # one replica per stage group, in layer order


@dataclass
class _Relay:
    """How far one micro-batch got along its route."""

    reached: int = 0  # stages whose turn was taken (written to, or given up)
    reply: shard_pb2.ForwardResponse | None = None  # the last stage's reply so far
    seconds: list[float] = field(default_factory=list)  # compute time per stage
    failed: dict[str, str] = field(default_factory=dict)  # seq_id -> why it failed on some stage


class Pipeline:
    def __init__(self, model: str, groups: list[StageGroup], forwarding: str = DEFAULT_FORWARDING,
                 wire_dtype: str = DEFAULT_WIRE_DTYPE, label: str = "") -> None:
        self.model = model  # the shards' name on the nodes (coordinator/generations.py)
        self.label = label or model  # the served model's name (metrics, logs)
        self.groups = groups
        self.forwarding = forwarding  # direct | star
        self.wire_dtype = wire_dtype  # of hidden states between stages; auto: each stage's own dtype
        self.pipeline_id = uuid.uuid4().hex  # names this pipeline's micro-batches on the nodes (with batch ids)
        self._batch_ids = itertools.count(1)
        self.in_flight = 0  # micro-batches between step's start and end; told to each stage (its thread count)

    @property
    def replicas(self) -> list[Replica]:
        return [r for g in self.groups for r in g.replicas]

    def replica_on(self, node_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.node_id == node_id), None)

    def describe_error(self, error: StageError) -> str:
        """The failure with the node's address and layer range, so a user knows what is down."""
        replica = self.replica_on(error.node_id)
        where = replica.describe() if replica else f"node {error.node_id}"
        return f"{where} failed: {error.code}: {error.message}"

    def _request(self, plan: MicroBatchPlan, batch_id: int) -> shard_pb2.ForwardRequest:
        slices = []
        for e in plan.entries:
            req = e.request
            recent = req.context_ids() if req.sampling.needs_history else []
            grammar, grammar_ids = req.grammar_to_send(e.wants_token)
            first = e.start_pos == req.cached_positions  # its cache starts here (after the cached blocks it uses)
            slices.append(shard_pb2.SequenceSlice(
                seq_id=req.seq_id, start_pos=e.start_pos, num_tokens=len(e.token_ids),
                max_total_tokens=req.reserved_tokens if first else 0,
                prefix_hashes=req.prefix_hashes if first else (),
                sampling=wire.sampling_to_proto(req.sampling), recent_token_ids=recent, no_sample=not e.wants_token,
                draft_token_ids=e.drafts, provisional=e.provisional, prompt_tokens=req.num_prompt_tokens,
                score_token_ids=req.prompt_to_score(e.start_pos, len(e.token_ids)), grammar=grammar,
                grammar_token_ids=grammar_ids))
        ids = [e.request.request_id for e in plan.entries]
        carried = ",".join(ids[:8]) + (f",+{len(ids) - 8} more" if len(ids) > 8 else "")  # for the nodes' logs
        wire_dtype = "" if self.wire_dtype == "auto" else self.wire_dtype
        return shard_pb2.ForwardRequest(model=self.model, batch_id=batch_id, seqs=slices, request_id=carried,
                                        wire_dtype=wire_dtype)

    def reserve_batch_id(self) -> int:
        """A batch id for a micro-batch issued later (ring decode: its input is handed over before it is sent)."""
        return next(self._batch_ids)

    def abandon(self, route: Sequence[Replica], batch_id: int) -> None:
        """Tells every stage of ``route`` to give micro-batch ``batch_id`` up (ring decode: a step not taken)."""
        note = shard_pb2.ForwardRequest(model=self.model, pipeline_id=self.pipeline_id, batch_id=batch_id,
                                        abandon=True)
        for replica in route:
            asyncio.get_running_loop().create_task(replica.stream.notify(note))

    async def step(self, route: Sequence[Replica], plan: MicroBatchPlan, ring: RingStep | None = None
                   ) -> StepResult:
        """Runs one micro-batch along ``route``; releases pending on each replica ride along and go first.
        ``ring``: ring decode (forwarding direct only): where its input comes from and its tokens go.

        Must be called in issue order (the engine calls it synchronously up to its first await).
        """
        tickets = [r.order.take() for r in route]
        releases = [r.take_upkeep() for r in route]
        ring = ring if self.forwarding == "direct" and len(route) > 1 else None
        request = self._request(plan, ring.batch_id if ring and ring.batch_id else next(self._batch_ids))
        request.token_ids.extend(t for e in plan.entries for t in e.token_ids)
        relay = _Relay()
        waits = ring is not None and ring.batch_id is not None  # a ring step waits for the one before it
        self.in_flight += 0 if waits else 1
        try:
            if self.forwarding == "direct" and len(route) > 1:
                await run_direct(self, route, request, releases, tickets, relay, ring)
            else:
                for i in range(len(route)):
                    await self._stage(i, route, request, releases[i], tickets[i], relay)
        except BaseException:
            first = max(relay.reached - 1, 0)
            for replica, upkeep in zip(route[first:], releases[first:]):
                replica.owe_again(upkeep)  # may not have arrived; it is idempotent
            raise
        finally:
            self.in_flight -= 0 if waits else 1
            for replica, ticket in zip(route[relay.reached:], tickets[relay.reached:]):  # must not hold up later ones
                await replica.order.pass_turn(ticket)
        assert relay.reply is not None
        return step_result(plan, request, relay.reply, relay.seconds, relay.failed)

    async def _stage(self, i: int, route: Sequence[Replica], request: shard_pb2.ForwardRequest, upkeep: Upkeep,
                     ticket: int, relay: _Relay) -> None:
        """Sends the micro-batch to stage ``i`` in its ticket's turn and waits for its reply."""
        replica = route[i]
        if not request.seqs:  # every sequence failed on an earlier stage: nothing left to send
            replica.owe_again(upkeep)
            return
        if i > 0:
            assert relay.reply is not None
            del request.token_ids[:]
            request.hidden.CopyFrom(relay.reply.hidden)  # relayed as bytes; never decoded here
            metrics.HIDDEN_BYTES.labels(self.label, replica.node_id).inc(len(relay.reply.hidden.data))
        into = len(request.hidden.data) + len(request.hidden.row_scales) + len(request.token_ids) * 4
        for repeated in (request.release_seq_ids, request.keep_blocks, request.evict_block_hashes):
            del repeated[:]
        upkeep.add_to(request)
        await replica.order.wait_turn(ticket)
        if replica.state == "down":  # lost while this micro-batch was on its way: do not wait on it
            relay.reached = i + 1
            await replica.order.pass_turn(ticket)
            raise StageError(replica.node_id, "UNAVAILABLE", replica.last_error or "node is down", stream_lost=True)
        request.batches_in_flight = self.in_flight  # as of its turn on this stage
        try:
            pending = await replica.stream.send(request)
        finally:
            relay.reached = i + 1
            await replica.order.pass_turn(ticket)
        sent = time.perf_counter()
        relay.reply = reply = await pending
        replica.micro_batches += 1
        relay.seconds.append(reply.forward_seconds)
        metrics.observe_stage(self.label, replica.node_id, reply.forward_seconds)
        rtt = max(time.perf_counter() - sent - reply.held_seconds, 0.0)
        metrics.observe_link(self.label, COORDINATOR, replica.node_id, into, rtt)
        back = len(reply.hidden.data) + len(reply.hidden.row_scales) + len(reply.next_token_ids) * 4
        metrics.observe_link(self.label, replica.node_id, COORDINATOR, back)
        if reply.seq_errors:
            self._drop_failed(request, replica, reply, relay.failed, last=i == len(route) - 1)

    def _drop_failed(self, request: shard_pb2.ForwardRequest, replica: Replica, reply: shard_pb2.ForwardResponse,
                     failed: dict[str, str], last: bool) -> None:
        """Sequences that failed alone on ``replica`` leave the micro-batch: its hidden output no longer has
        their rows, and the stages after it never see them (the coordinator releases them everywhere)."""
        for e in reply.seq_errors:
            failed[e.seq_id] = f"{replica.describe()} failed: {e.code}: {e.message}"
        if last:  # its tokens are one per sequence it was sent (-1 for the failed ones)
            return
        kept = [s for s in request.seqs if s.seq_id not in failed]
        del request.seqs[:]
        request.seqs.extend(kept)

    async def flush_releases(self, busy: set[Replica]) -> None:
        """Sends pending releases (and prefix-cache upkeep) with a Release call to replicas no micro-batch is about
        to visit."""
        todo = [(r, r.take_upkeep()) for r in self.replicas if r not in busy and r.state != "down"]
        todo = [(r, upkeep) for r, upkeep in todo if upkeep]
        if not todo:
            return
        results = await asyncio.gather(*(r.client.release(self.model, upkeep) for r, upkeep in todo),
                                       return_exceptions=True)
        for (r, upkeep), res in zip(todo, results):
            if isinstance(res, BaseException):
                logger.warning("release of %d sequence(s) on %s failed: %r", len(upkeep.release), r.node_id, res)
