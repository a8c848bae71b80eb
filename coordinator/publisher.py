"""What a model's engine tells the world after a micro-batch: tokens and ends to the requests, releases to the
nodes (``Replica.pending_release``), figures to the metrics; and the replay of a lost lane's sequences."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from coordinator import metrics
from coordinator.pipeline import Route
from coordinator.prefix_cache import PrefixIndex
from coordinator.request import Request, TokenEvent
from coordinator.scheduler import MicroBatchPlan, Scheduler
from coordinator.slow_stages import SlowStages
from coordinator.step_result import StepResult
from protos import shard_pb2
from protos.data_structures import KV_BLOCK_SIZE, PREFIX_MISSING

logger = logging.getLogger(__name__)


@dataclass
class FailoverStats:
    failovers: int = 0  # sequences moved to another route
    recoveries: int = 0  # of those, how many produced their next token
    last_recovery_seconds: float = 0.0  # loss seen -> next token, of the last recovered sequence


def keep_later(req: Request, route: Route, prefix: PrefixIndex, blocks: int) -> None:
    """Its sequence's full blocks up to ``blocks`` go into the prefix cache of every live node of ``route`` with the
    next micro-batch or Release call there (before its release); a block evicted but not yet told stays instead."""
    if blocks <= req.kept_blocks:
        return
    hashes = req.context_hashes(blocks)[req.kept_blocks:]
    for replica in route:
        if replica.state != "down":
            prefix.add(replica.node_id, hashes)
            kept = set(hashes)
            replica.pending_evict = [h for h in replica.pending_evict if h not in kept]
            replica.pending_keep.append(shard_pb2.KeepBlocks(seq_id=req.seq_id, first_block=req.kept_blocks,
                                                             hashes=hashes))
    req.kept_blocks = blocks


def release_later(req: Request, route: Route) -> None:
    """Its KV is freed on every live node of ``route`` with the next micro-batch or Release call there."""
    for replica in route:
        if replica.state != "down":
            replica.pending_release.append(req.seq_id)


class Publisher:
    def __init__(self, model: str, scheduler: Scheduler) -> None:
        self.model = model
        self.scheduler = scheduler
        self.stats = FailoverStats()
        self.slow: SlowStages | None = None  # stages judged against their nodes' profiles (coordinator/slow_stages.py)

    def deliver(self, plan: MicroBatchPlan, route: Route, result: StepResult) -> None:
        """Publishes what the scheduler made of a micro-batch that came back."""
        self._observe_batch(plan, route, result)
        outcome = self.scheduler.postprocess(plan, result.next_token_ids, result.stage_seconds, result.failed,
                                             result.accepted, result.logprobs, result.scored)
        for req, why in outcome.failed:  # these alone failed on a node; the rest of the batch goes on
            if req.prefix_hashes and PREFIX_MISSING in why:
                self._without_cache(req, route, why)
                continue
            logger.error("model %s: request %s failed alone: %s", self.model, req.request_id, why)
            release_later(req, route)
            req.finish("error", why)
        for new in outcome.tokens:
            req = new.request
            self._observe_tokens(req, route, len(new.token_ids))
            prefix = self.scheduler.prefix
            if prefix is not None and req.use_prefix_cache and (new.finish_reason or req.kept_blocks * KV_BLOCK_SIZE
                                                                < req.num_prompt_tokens):
                keep_later(req, route, prefix, req.num_computed // KV_BLOCK_SIZE)  # its prompt, and at the end all
            if new.finish_reason:
                release_later(req, route)
                req.finish(new.finish_reason, token_ids=new.token_ids, logprobs=new.logprobs,
                           prompt_logprobs=new.prompt_logprobs)
            else:
                req.events.put_nowait(TokenEvent(new.token_ids, logprobs=new.logprobs,
                                                 prompt_logprobs=new.prompt_logprobs))

    def _without_cache(self, req: Request, route: Route, why: str) -> None:
        """A node lacked cached blocks the coordinator counted on (it should not happen): the request starts over
        from its first token, and those blocks are evicted everywhere."""
        logger.warning("model %s: request %s starts again without the prefix cache: %s", self.model, req.request_id,
                       why)
        if self.scheduler.prefix is not None:
            for replica in route:
                self.scheduler.prefix.discard(replica.node_id, req.prefix_hashes)
        release_later(req, route)
        req.use_prefix_cache = False
        req.restart_on_new_route(f"{req.request_id}-{uuid.uuid4().hex[:8]}")
        self.scheduler.requeue_front([req])

    def fail(self, plan: MicroBatchPlan, route: Route, why: str) -> None:
        """The whole micro-batch failed (refused by a node): its requests end with ``why``."""
        logger.error("model %s: micro-batch of %d sequence(s) failed: %s", self.model, len(plan.entries), why)
        for entry in plan.entries:
            self.scheduler.remove(entry.request)
            release_later(entry.request, route)
            entry.request.finish("error", why)

    def fail_waiting(self, why: str) -> None:
        """The model cannot run anything now: every waiting request ends with ``why``."""
        for req in list(self.scheduler.waiting):
            self.scheduler.remove(req)
            req.finish("error", why)
        logger.error("%s; its waiting requests were failed", why)

    def cancelled(self, req: Request, route: Route | None) -> None:
        if req.num_computed > 0 and route is not None:
            release_later(req, route)
        req.finish("cancelled")
        logger.info("request %s cancelled after %d tokens", req.request_id, len(req.output_ids))

    def replay(self, lane: int, route: Route) -> None:
        """The sequences of a lane that lost a node go back to the front of the queue, under new sequence ids,
        to be replayed (prompt + generated tokens) on another route."""
        members = self.scheduler.lane_members(lane)
        for req in members:
            release_later(req, route)  # healthy nodes of the old route free it
            old = req.seq_id
            req.restart_on_new_route(f"{req.request_id}-{uuid.uuid4().hex[:8]}")
            self.stats.failovers += 1
            metrics.FAILOVERS.labels(self.model).inc()
            logger.warning("request %s: lost its KV (route %s); replaying %d tokens (prompt %d + generated %d) "
                           "as %s", req.request_id, "/".join(r.node_id for r in route), req.num_context_tokens,
                           req.num_prompt_tokens, len(req.output_ids), req.seq_id)
            logger.debug("request %s: old sequence %s released on the healthy nodes", req.request_id, old)
        self.scheduler.requeue_front(members)

    def admitted(self, req: Request) -> None:
        if req.failovers == 0:
            metrics.QUEUE.labels(self.model).observe(req.queue_seconds)
            metrics.PROMPT_TOKENS.labels(self.model).inc(req.num_prompt_tokens)
            prefix = self.scheduler.prefix
            if prefix is not None and req.use_prefix_cache and not req.prompt_logprobs:
                prefix.count_query(req.num_prompt_tokens, req.cached_tokens)
                metrics.PREFIX_QUERIES.labels(self.model).inc(req.num_prompt_tokens)
                metrics.PREFIX_HITS.labels(self.model).inc(req.cached_tokens)
        logger.debug("request %s admitted to lane %d after %.3f s in the queue", req.request_id, req.lane,
                     req.queue_seconds)

    def _observe_batch(self, plan: MicroBatchPlan, route: Route, result: StepResult) -> None:
        phase = "decode" if all(e.request.prefill_done for e in plan.entries) else "prefill"
        for replica, seconds in zip(route, result.stage_seconds):
            metrics.STAGE_SECONDS.labels(self.model, replica.node_id, phase).observe(seconds)
            if self.slow is not None and phase == "decode":
                self.slow.observe(replica.node_id, replica.layers, plan.num_tokens, seconds)
        metrics.BATCH_SEQS.labels(self.model).observe(len(plan.entries))
        metrics.BATCH_TOKENS.labels(self.model).observe(plan.num_tokens)
        verified = [(e, n) for i, (e, n) in enumerate(zip(plan.entries, result.accepted)) if e.drafts
                    and i not in result.failed]
        if verified:
            metrics.DRAFT_STEPS.labels(self.model).inc(len(verified))
            metrics.DRAFT_PROPOSED.labels(self.model).inc(sum(len(e.drafts) for e, _ in verified))
            metrics.DRAFT_ACCEPTED.labels(self.model).inc(sum(n for _, n in verified))

    def _observe_tokens(self, req: Request, route: Route, count: int) -> None:
        """``count`` new tokens of ``req`` (several when drafts were accepted: each is counted with the mean gap)."""
        now = time.monotonic()
        later = count  # tokens after the first
        if req.first_token_time is None:
            req.first_token_time = now
            metrics.TTFT.labels(self.model).observe(now - req.arrival_time)
            later -= 1
        for _ in range(later):
            metrics.ITL.labels(self.model).observe((now - req.last_token_time) / later)
        req.last_token_time = now
        if req.failover_started is not None:
            self._recovered(req, route)
        metrics.GENERATION_TOKENS.labels(self.model).inc(count)

    def _recovered(self, req: Request, route: Route) -> None:
        assert req.failover_started is not None
        took = time.monotonic() - req.failover_started
        req.failover_started = None
        self.stats.recoveries += 1
        self.stats.last_recovery_seconds = took
        metrics.RECOVERIES.labels(self.model).inc()
        metrics.RECOVERY_SECONDS.labels(self.model).observe(took)
        logger.warning("request %s recovered on route %s: KV rebuilt and the next token out %.2f s after the loss",
                       req.request_id, "/".join(r.node_id for r in route), took)
