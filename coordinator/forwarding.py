"""Shard-to-shard forwarding (a model's ``forwarding: direct``): one micro-batch along its route.

The coordinator writes the micro-batch to every stage of the route at once, in each replica's issue order: the
first stage gets the token ids, every later stage the slices and ``hidden_from_peer``, every stage but the last
the next stage's node address (``forward_to``). Each stage hands its output straight to the next stage's node
(``Handoff``) with a report of what it did (compute time, sequences that failed alone), and the last stage answers
with the sampled tokens and every report, so K stages cost K + 1 one-way trips per step instead of the star
relay's 2K, and the coordinator hears one reply per step. The other stages speak only when the micro-batch fails
there in a way the next stage cannot report (``report_errors_only``), and their streams are watched: a lost stage
is noticed exactly as with the star relay.

When a stage fails, the stages that may still wait for the micro-batch's input are told to give it up
(``abandon``), the last stage's reply is awaited, and the failure that explains the rest is raised: a lost stream
first (its node is down: the lane fails over), else the first failure that is not only a consequence of another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator import metrics
from coordinator.batch import MicroBatchPlan
from coordinator.node_client import StageError
from coordinator.upkeep import Upkeep
from protos import shard_pb2

if TYPE_CHECKING:
    from coordinator.pipeline import Pipeline, Replica, _Relay

COORDINATOR = "coordinator"  # the coordinator's end of a link, in metrics

Timed = tuple[shard_pb2.ForwardResponse, float]  # a reply and when it came (time.perf_counter)


@dataclass(frozen=True)
class RingStep:
    """Ring decode, for one busy lane: the next decode step is sent before this one ends, and this step's last
    stage hands its sampled tokens straight to the first stage as that step's input, so a decode step costs K
    one-way trips. ``batch_id``: this step's, preassigned, when its tokens come from the step before (None: from
    the coordinator); ``tokens_to_batch``: the step its last stage hands its tokens to (None: none)."""

    batch_id: int | None = None
    tokens_to_batch: int | None = None


@dataclass(eq=False)
class SentAhead:
    """Ring decode: a lane's next decode step, sent before the step ``after`` ends (its input tokens come from
    that step's last stage); ``next_batch_id`` is where its own last stage hands its tokens."""

    plan: MicroBatchPlan
    batch_id: int
    next_batch_id: int
    after: asyncio.Task[None]
    task: asyncio.Task[None] | None = None
    discard: bool = False  # the step before it failed: its outcome is dropped


def stage_message(pipe: Pipeline, route: Sequence[Replica], request: shard_pb2.ForwardRequest, i: int,
                  upkeep: Upkeep, ring: RingStep | None = None) -> shard_pb2.ForwardRequest:
    """Stage ``i``'s copy of the micro-batch: what it needs of ``request`` and where its input and output go."""
    message = shard_pb2.ForwardRequest()
    message.CopyFrom(request)
    message.pipeline_id = pipe.pipeline_id
    upkeep.add_to(message)
    if i == 0 and ring is not None and ring.batch_id is not None:
        del message.token_ids[:]
        message.tokens_from_peer = True
    if i == len(route) - 1 and ring is not None and ring.tokens_to_batch is not None:
        message.tokens_to, message.tokens_batch_id = route[0].client.node.address, ring.tokens_to_batch
    if i > 0:
        del message.token_ids[:]
        message.hidden_from_peer = True
    if i < len(route) - 1:
        nxt = route[i + 1]
        message.forward_to, message.forward_to_node = nxt.client.node.address, nxt.node_id
        message.report_errors_only = True
        for s in message.seqs:  # sampling inputs are read by the last stage only
            del s.recent_token_ids[:], s.score_token_ids[:], s.grammar_token_ids[:]
            s.grammar = ""
    return message


async def _timed(reply: Awaitable[shard_pb2.ForwardResponse]) -> Timed:
    result = await reply
    return result, time.perf_counter()


async def run_direct(pipe: Pipeline, route: Sequence[Replica], request: shard_pb2.ForwardRequest,
                     releases: list[Upkeep], tickets: list[int], relay: _Relay, ring: RingStep | None = None
                     ) -> None:
    """Sends the micro-batch to every stage of ``route`` and waits for the last one's reply (see the module doc)."""
    batch_id = request.batch_id
    watched: list[asyncio.Future[shard_pb2.ForwardResponse]] = []
    last: asyncio.Task[Timed] | None = None
    try:
        for i, replica in enumerate(route):
            message = stage_message(pipe, route, request, i, releases[i], ring)
            await replica.order.wait_turn(tickets[i])
            if replica.state == "down":  # lost while this micro-batch was on its way: do not wait on it
                relay.reached = i + 1
                await replica.order.pass_turn(tickets[i])
                raise StageError(replica.node_id, "UNAVAILABLE", replica.last_error or "node is down",
                                 stream_lost=True)
            message.batches_in_flight = max(pipe.in_flight, 1)  # a ring step sent ahead does not count itself
            try:
                if i < len(route) - 1:
                    watched.append(replica.stream.watch(batch_id))
                    await replica.stream.post(message)
                else:
                    sent = time.perf_counter()
                    last = asyncio.ensure_future(_timed(await replica.stream.send(message)))
            finally:
                relay.reached = i + 1
                await replica.order.pass_turn(tickets[i])
        assert last is not None
        waits: list[asyncio.Future[Any]] = [last, *watched]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not last.done() or last.exception() is not None:
            await _abandon(pipe, route, batch_id, last)
            raise _blame([*zip((r.node_id for r in route), watched), (route[-1].node_id, last)])
        reply, came = last.result()
    except BaseException:
        if last is not None and not last.done():
            last.add_done_callback(_failure)  # consumed when it comes
        raise
    finally:
        for replica, _ in zip(route, watched):
            replica.stream.unwatch(batch_id)
    _record(pipe, route, request, reply, max(came - sent - reply.held_seconds, 0.0), relay)


def _failure(task: asyncio.Future[Any]) -> BaseException | None:
    return None if not task.done() or task.cancelled() else task.exception()


async def _abandon(pipe: Pipeline, route: Sequence[Replica], batch_id: int, last: asyncio.Task[Timed]) -> None:
    """Tells every stage to give the micro-batch up (it may wait for an input that will not come), then waits for
    the last stage's answer: its reply, its stream breaking, or its deadline."""
    note = shard_pb2.ForwardRequest(model=pipe.model, pipeline_id=pipe.pipeline_id, batch_id=batch_id, abandon=True)
    await asyncio.gather(*(r.stream.notify(note) for r in route[1:]), return_exceptions=True)
    await asyncio.wait([last])


def _blame(results: list[tuple[str, asyncio.Future[Any]]]) -> BaseException:
    """The failure that explains the others: a lost stage, else a failure that is not only a consequence.
    ``results``: (node id, its watched failure report or the last stage's reply) per stage."""
    errors: list[BaseException] = []
    for node_id, fut in results:
        error = _failure(fut)
        if error is None and fut.done() and not fut.cancelled() and isinstance(fut.result(), shard_pb2.ForwardResponse):
            reply = fut.result()  # a watched stage's failure report
            error = StageError(reply.error_node or node_id, reply.error_code, reply.error_message, False)
        if error is not None:
            errors.append(error)
    lost = [e for e in errors if isinstance(e, StageError) and e.stream_lost]
    causes = [e for e in errors if not (isinstance(e, StageError) and e.code == "ABORTED")]
    return (lost or causes or errors)[0]


def _record(pipe: Pipeline, route: Sequence[Replica], request: shard_pb2.ForwardRequest,
            reply: shard_pb2.ForwardResponse, rtt_s: float, relay: _Relay) -> None:
    """The last stage answered for every stage: compute times, sequences that failed alone, what each link
    carried."""
    by_node = {r.node_id: r for r in route}
    reports = list(reply.upstream)
    for report in reports:
        replica = by_node.get(report.node_id)
        for e in report.seq_errors:
            where = replica.describe() if replica else f"node {report.node_id}"
            relay.failed[e.seq_id] = f"{where} failed: {e.code}: {e.message}"
    for e in reply.seq_errors:
        relay.failed[e.seq_id] = f"{route[-1].describe()} failed: {e.code}: {e.message}"
    seconds = [r.forward_seconds for r in reports][:len(route) - 1]
    relay.seconds = seconds + [0.0] * (len(route) - 1 - len(seconds)) + [reply.forward_seconds]
    for replica, busy in zip(route, relay.seconds):
        replica.micro_batches += 1
        metrics.observe_stage(pipe.label, replica.node_id, busy)
    metrics.observe_link(pipe.label, COORDINATOR, route[0].node_id, len(request.token_ids) * 4,
                         route[0].client.take_round_trip())  # its health checks time that link
    for report, nxt in zip(reports, route[1:]):
        metrics.HIDDEN_BYTES.labels(pipe.label, nxt.node_id).inc(report.handoff_bytes)
        metrics.observe_link(pipe.label, report.node_id, nxt.node_id, report.handoff_bytes,
                             report.handoff_rtt_seconds or None)
    metrics.observe_link(pipe.label, COORDINATOR, route[-1].node_id, 0, rtt_s)
    metrics.observe_link(pipe.label, route[-1].node_id, COORDINATOR, len(reply.next_token_ids) * 4)
    relay.reply = reply
