"""One coordinator Forward stream on a node: its micro-batches run in the order they came, each answered on it.

With the star relay a micro-batch brings its input (token ids or hidden states) and its reply carries the output. With
shard-to-shard forwarding (``pipeline_id`` set) a later stage's input comes by Handoff from the previous stage's node
(``hidden_from_peer``: it waits in the ``Mailbox``) and a stage's output goes by Handoff to the next one
(``forward_to``); the reply to the coordinator then carries only times, errors and (last stage) the tokens. A message
with ``abandon`` gives a micro-batch up at once, even while the stream's turn waits for its input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from protos import shard_pb2, tensors, wire
from protos.activations import decode_hidden, encode_hidden
from protos.data_structures import TokenLogprobs
from shard_node import metrics
from shard_node.batch_decode import decode_batch
from shard_node.handoff import Abandoned, Mailbox, PeerError, PeerLinks, Refused, key_of
from shard_node.micro_batch import BatchError, BatchResult, MicroBatch
from shard_node.runner import ShardRunner

logger = logging.getLogger(__name__)
MAX_QUEUED = 64  # micro-batches read ahead of the one running (the coordinator keeps a few in flight)
HANDOFF_WAIT_S = 120.0  # how long a micro-batch waits for its input from the previous stage

RunBatch = Callable[[ShardRunner, MicroBatch, int, int], "asyncio.Future[BatchResult]"]


@dataclass
class NodeContext:
    """What every Forward stream of a node shares."""

    node_id: str
    runners: dict[str, ShardRunner]
    run: RunBatch  # runs a micro-batch on the compute thread: (runner, batch, owner, batches_in_flight)
    mailbox: Mailbox = field(default_factory=Mailbox)
    peers: PeerLinks = field(default_factory=lambda: PeerLinks(60.0))


@dataclass
class _Input:
    """What a micro-batch runs on once its handoff (if any) is in: the slices that are left and their rows."""

    seqs: list[shard_pb2.SequenceSlice]
    hidden: torch.Tensor | None
    dropped: list[str] = field(default_factory=list)  # sequences that failed on an earlier stage
    reports: list[shard_pb2.StageReport] = field(default_factory=list)  # what the earlier stages did
    token_ids: list[int] | None = None  # ring decode: the first stage's input, from the previous step's last stage


class UpstreamFailed(BatchError):
    """The micro-batch failed on an earlier stage (``node``); this one only passes the failure on."""

    def __init__(self, code: str, message: str, node: str) -> None:
        super().__init__(code or "INTERNAL", message)
        self.node = node


class ForwardSession:
    def __init__(self, ctx: NodeContext, owner: int) -> None:
        self.ctx, self.owner = ctx, owner

    async def replies(self, requests: AsyncIterator[shard_pb2.ForwardRequest]
                      ) -> AsyncIterator[shard_pb2.ForwardResponse]:
        queue: asyncio.Queue[shard_pb2.ForwardRequest | None] = asyncio.Queue(MAX_QUEUED)
        reader = asyncio.get_running_loop().create_task(self._read(requests, queue))
        try:
            while (req := await queue.get()) is not None:
                reply = await self.answer(req)
                if reply is not None:
                    yield reply
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[shard_pb2.ForwardRequest],
                    queue: asyncio.Queue[shard_pb2.ForwardRequest | None]) -> None:
        try:
            async for req in requests:
                if req.abandon:
                    self.ctx.mailbox.abandon(key_of(req))
                else:
                    await queue.put(req)
        finally:
            await queue.put(None)

    async def answer(self, req: shard_pb2.ForwardRequest) -> shard_pb2.ForwardResponse | None:
        """Runs one micro-batch (waiting for its input when it comes from a peer) and hands its output on; None
        when nothing is to be said (``report_errors_only`` and the next stage has it)."""
        arrived = time.perf_counter()
        reply = shard_pb2.ForwardResponse(batch_id=req.batch_id)
        given = _Input([], None)
        result: BatchResult | None = None
        try:
            runner = self._runner(req.model)
            given = await self._input(runner, req)
            batch = decode_batch(runner, req, given.seqs, given.hidden, given.token_ids)
            result = await self.ctx.run(runner, batch, self.owner, req.batches_in_flight)
        except UpstreamFailed as e:
            reply.error_code, reply.error_message, reply.error_node = e.code, str(e), e.node
        except wire.WireError as e:
            reply.error_code, reply.error_message = "INVALID_ARGUMENT", str(e)
        except BatchError as e:
            reply.error_code, reply.error_message = e.code, str(e)
        except Exception as e:  # noqa: BLE001 - a bug must cost one batch, not the stream of every sequence
            logger.exception("batch %d (%s) failed", req.batch_id, req.request_id or "-")
            reply.error_code, reply.error_message = "INTERNAL", f"node {self.ctx.node_id}: {type(e).__name__}: {e}"
        if result is not None:
            self._fill(req, reply, result, given.dropped)
        self._observe(req, reply)
        if req.forward_to:
            handed = await self._hand_on(req, reply, result, given)
            if handed and req.report_errors_only:
                return None
        elif result is not None and result.hidden is not None:
            reply.hidden.CopyFrom(encode_hidden(result.hidden, req.wire_dtype))
        if req.hidden_from_peer and not req.forward_to:
            reply.upstream.extend(given.reports)
        if req.tokens_to:
            await self._hand_tokens(req, reply)
        reply.held_seconds = time.perf_counter() - arrived
        return reply

    def _runner(self, model: str) -> ShardRunner:
        runner = self.ctx.runners.get(model)
        if runner is None:
            raise BatchError("NOT_FOUND", f"model {model!r} is not loaded on node {self.ctx.node_id}; "
                             f"loaded: {sorted(self.ctx.runners)}")
        return runner

    async def _input(self, runner: ShardRunner, req: shard_pb2.ForwardRequest) -> _Input:
        """The slices and hidden rows this stage runs: from the request, or from the previous stage's handoff."""
        if req.tokens_from_peer:
            return await self._ring_input(runner, req)
        if not req.hidden_from_peer:
            hidden = None
            if not runner.is_first:
                rows = sum(s.num_tokens for s in req.seqs)
                hidden = decode_hidden(req.hidden, (rows, runner.spec.hidden_size), runner.dtype)
            return _Input(list(req.seqs), hidden)
        if runner.is_first:
            raise BatchError("INVALID_ARGUMENT", "the first stage takes token ids, not a handoff")
        handoff = await self._take(req)
        if handoff.error:
            raise UpstreamFailed(handoff.error_code, handoff.error, handoff.error_node or handoff.from_node)
        gone = set(handoff.dropped_seq_ids)
        seqs = [s for s in req.seqs if s.seq_id not in gone]
        rows = sum(s.num_tokens for s in seqs)
        hidden = decode_hidden(handoff.hidden, (rows, runner.spec.hidden_size), runner.dtype)
        return _Input(seqs, hidden, list(handoff.dropped_seq_ids), list(handoff.reports))

    async def _ring_input(self, runner: ShardRunner, req: shard_pb2.ForwardRequest) -> _Input:
        """Ring decode: one token per sequence, sampled by the previous step's last stage; a sequence without one
        (it failed, or its step sampled nothing) is left out, as if it had failed on an earlier stage."""
        if not runner.is_first or any(s.num_tokens != 1 for s in req.seqs):
            raise BatchError("INVALID_ARGUMENT", "tokens_from_peer is for the first stage's decode rows (one token "
                             "per sequence)")
        handoff = await self._take(req)
        if handoff.error:
            raise UpstreamFailed(handoff.error_code, handoff.error, handoff.error_node or handoff.from_node)
        sampled = dict(zip(handoff.token_seq_ids, handoff.token_ids))
        seqs = [s for s in req.seqs if sampled.get(s.seq_id, -1) >= 0]
        dropped = [s.seq_id for s in req.seqs if sampled.get(s.seq_id, -1) < 0]
        return _Input(seqs, None, dropped, token_ids=[sampled[s.seq_id] for s in seqs])

    async def _take(self, req: shard_pb2.ForwardRequest) -> shard_pb2.HandoffRequest:
        """This micro-batch's handoff from the mailbox (ABORTED when given up, UNAVAILABLE when refused here)."""
        try:
            return await self.ctx.mailbox.take(key_of(req), HANDOFF_WAIT_S)
        except Abandoned:
            raise BatchError("ABORTED", "the coordinator gave this micro-batch up (a stage of its route failed)"
                             ) from None
        except Refused as e:
            raise BatchError("UNAVAILABLE", f"its input from the previous stage was refused here: {e}") from None
        except TimeoutError:
            raise BatchError("DEADLINE_EXCEEDED", f"the previous stage's output did not come within "
                             f"{HANDOFF_WAIT_S:.0f} s") from None

    def _fill(self, req: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse, result: BatchResult,
              dropped: list[str]) -> None:
        """Tokens (one per slice of the request: -1 for those dropped earlier), logits, times, row errors."""
        if result.hidden is None:  # the last stage: one token per slice it was sent
            ran, gone = iter(result.next_token_ids), set(dropped)
            reply.next_token_ids.extend(-1 if s.seq_id in gone else next(ran) for s in req.seqs)
            if any(result.accepted_drafts):  # speculative decoding (none accepted: left empty)
                accepted = iter(result.accepted_drafts)
                reply.accepted_drafts.extend(0 if s.seq_id in gone else next(accepted) for s in req.seqs)
            for out, values in ((reply.logprobs, result.logprobs), (reply.scored, result.scored)):
                given = iter(values)  # (an empty message for a sequence that asked for none)
                if any(lp is not None for lp in values):
                    out.extend(wire.logprobs_to_proto(TokenLogprobs() if s.seq_id in gone else next(given)
                                                      or TokenLogprobs()) for s in req.seqs)
        if result.logits is not None:
            reply.logits.CopyFrom(tensors.tensor_to_proto(result.logits))
        reply.forward_seconds = result.forward_seconds
        for row_error in result.row_errors:
            reply.seq_errors.add(seq_id=row_error.seq_id, code=row_error.code, message=row_error.message)
            logger.warning("batch %d: sequence %s failed alone: %s %s", req.batch_id, row_error.seq_id,
                           row_error.code, row_error.message)
            metrics.REFUSED.labels(req.model, self.ctx.node_id, row_error.code).inc()

    async def _hand_on(self, req: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse,
                       result: BatchResult | None, given: _Input) -> bool:
        """Hands the output, or the failure (so the next stage does not wait, and reports it), to the next stage's
        node; False (and the reply says why) when it could not."""
        handoff = shard_pb2.HandoffRequest(model=req.model, pipeline_id=req.pipeline_id, batch_id=req.batch_id,
                                           from_node=self.ctx.node_id, reports=given.reports)
        if result is None or result.hidden is None:
            handoff.error = reply.error_message or "no output"
            handoff.error_code = reply.error_code or "INTERNAL"
            handoff.error_node = reply.error_node or self.ctx.node_id
        else:
            handoff.hidden.CopyFrom(encode_hidden(result.hidden, req.wire_dtype))
            handoff.dropped_seq_ids.extend(given.dropped + [e.seq_id for e in result.row_errors])
        report = handoff.reports.add(node_id=self.ctx.node_id, forward_seconds=reply.forward_seconds,
                                     handoff_bytes=len(handoff.hidden.data) + len(handoff.hidden.row_scales),
                                     seq_errors=reply.seq_errors)
        try:
            report.handoff_rtt_seconds = await self.ctx.peers.send(req.forward_to, handoff)
            return True
        except Exception as e:  # noqa: BLE001 - PeerError, a refused link, a channel that cannot open
            why = e if isinstance(e, PeerError) else f"{type(e).__name__}: {e}"
            logger.warning("batch %d: cannot hand over to node %s at %s: %s", req.batch_id, req.forward_to_node,
                           req.forward_to, why)
            if not reply.error_code:
                reply.error_code = "UNAVAILABLE"
                reply.error_message = (f"node {self.ctx.node_id} could not hand its output to the next stage, node "
                                       f"{req.forward_to_node} at {req.forward_to}: {why}")
            return False

    async def _hand_tokens(self, req: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse) -> None:
        """Ring decode: the sampled token ids (or this step's failure) to the first stage, as the next step's input;
        the reply says when they could not go (the coordinator then gives that step up)."""
        handoff = shard_pb2.HandoffRequest(model=req.model, pipeline_id=req.pipeline_id, batch_id=req.tokens_batch_id,
                                           from_node=self.ctx.node_id)
        if reply.error_code:
            handoff.error, handoff.error_code = reply.error_message, reply.error_code
            handoff.error_node = reply.error_node or self.ctx.node_id
        else:
            handoff.token_ids.extend(reply.next_token_ids)
            handoff.token_seq_ids.extend(s.seq_id for s in req.seqs)
        try:
            await self.ctx.peers.send(req.tokens_to, handoff)
        except Exception as e:  # noqa: BLE001 - PeerError, a refused link, a channel that cannot open
            reply.tokens_handoff_error = f"node {self.ctx.node_id} could not hand the tokens to {req.tokens_to}: {e}"
            logger.warning("batch %d: %s", req.batch_id, reply.tokens_handoff_error)

    def _observe(self, req: shard_pb2.ForwardRequest, reply: shard_pb2.ForwardResponse) -> None:
        if reply.error_node:  # failed upstream: that node counted it
            return
        if reply.error_code:
            logger.warning("batch %d (%s) refused: %s %s", req.batch_id, req.request_id or "-", reply.error_code,
                           reply.error_message)
            label = req.model if req.model in self.ctx.runners else "(not loaded)"  # callers may send any name
            metrics.REFUSED.labels(label, self.ctx.node_id, reply.error_code).inc()
            return
        phase = ("prefill" if any(s.num_tokens > 1 + len(s.draft_token_ids) or s.start_pos == 0 for s in req.seqs)
                 else "decode")  # a verify slice (the newest token and its drafts) is decode
        logger.debug("batch %d (%s): %s of %d sequence(s) in %.1f ms", req.batch_id, req.request_id, phase,
                     len(req.seqs), reply.forward_seconds * 1000)
        metrics.FORWARD_SECONDS.labels(req.model, self.ctx.node_id, phase).observe(reply.forward_seconds)
        metrics.BATCH_TOKENS.labels(req.model, self.ctx.node_id).observe(sum(s.num_tokens for s in req.seqs))
