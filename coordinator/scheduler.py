"""Admission and micro-batch formation for one model: no I/O, no tensors.

Requests wait in a bounded FIFO queue until every stage of some route has KV room for prompt +
max_tokens. Each of the ``depth`` lanes runs along a route (one node per stage; with replicas,
lanes spread over them). An admitted request joins the least loaded usable lane with room, so load
is balanced across replicas. Each lane has at most one micro-batch in flight, so with ``depth``
lanes the engine keeps ``depth`` micro-batches moving through the stages at once, and a sequence
never waits behind its own previous token. A lane's micro-batch holds its decode rows plus prefill
chunks, within a token budget, so one long prompt delays everyone's next token by at most one chunk.
Prefill is pipelined: a lane with budget left takes the next chunk of a prompt whose earlier chunk is
still in flight on another lane of the same route (every replica runs micro-batches in issue order, so
chunk 2 runs on stage 1 while chunk 1 runs on stage 2).
A request whose route lost a node goes back to the front of the queue and is replayed elsewhere.
With prefix caching (``prefix``, coordinator/prefix_cache.py), a request goes to the lane whose route holds the
most of its context's first blocks, starts after them, and cached blocks no running request uses are evicted, least
recently used first, when nothing fits otherwise.
"""

from __future__ import annotations

import time
from collections import deque

from coordinator.batch import BatchEntry, MicroBatchPlan, NewTokens, StepOutcome, drafts_for, take_tokens
from coordinator.kv_admission import place
from coordinator.prefix_cache import PrefixIndex
from coordinator.request import Request, RequestStatus
from protos.data_structures import TokenLogprobs

__all__ = ["BatchEntry", "MicroBatchPlan", "NeverFits", "QueueFull", "Scheduler", "StepOutcome"]


class NeverFits(ValueError):
    """The request needs more KV than the smallest stage has in total."""


class QueueFull(RuntimeError):
    """The waiting queue is at its bound; the client should retry later."""


class Scheduler:
    def __init__(self, kv_capacity_tokens: int, depth: int = 1, max_waiting: int = 256, max_batch_tokens: int = 256,
                 max_batch_seqs: int = 128, max_running: int = 1024, prefix: PrefixIndex | None = None) -> None:
        self.kv_capacity_tokens = kv_capacity_tokens  # smallest stage's budget: more can never fit
        self.max_waiting = max_waiting
        self.max_running = max_running  # sequences a shard holds at most (limits.max_sequences_per_shard)
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_seqs = max_batch_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admitted, in arrival order
        self.node_capacity: dict[str, int] = {}  # KV budget of each node's shard (none given: kv_capacity_tokens)
        self.lane_routes: list[tuple[str, ...]] = [()] * depth  # node of each stage, per lane
        self.usable: set[int] = set(range(depth))  # lanes whose every node is ready
        self.pipelined_prefill = True  # a prompt's next chunk may go while its earlier one is in flight
        self.prefix = prefix  # prefix caching: what every node's prefix cache holds (None: off)

    @property
    def depth(self) -> int:
        return len(self.lane_routes)

    def set_lanes(self, routes: list[tuple[str, ...]], usable: set[int], node_capacity: dict[str, int] | None = None,
                  kv_capacity_tokens: int | None = None) -> None:
        """The lanes as the engine's replicas see them: each lane's nodes (one per stage), the lanes whose every
        node is ready, each node's KV budget, and the smallest ready budget (None: unchanged)."""
        self.lane_routes = list(routes)
        self.usable = set(usable)
        if node_capacity is not None:
            self.node_capacity = dict(node_capacity)
        if kv_capacity_tokens is not None:
            self.kv_capacity_tokens = kv_capacity_tokens

    @property
    def kv_reserved_tokens(self) -> int:
        return sum(r.reserved_tokens for r in self.running)

    def reserved_on(self) -> dict[str, int]:
        """KV tokens reserved on each node by the running requests, and held by its prefix cache."""
        out: dict[str, int] = {}
        for r in self.running:
            for node in self.lane_routes[r.lane]:
                out[node] = out.get(node, 0) + r.new_kv_tokens
        if self.prefix is not None:
            for node in {n for route in self.lane_routes for n in route}:
                out[node] = out.get(node, 0) + self.prefix.tokens_on(node)
        return out

    def lane_has_room(self, lane: int, tokens: int, reserved: dict[str, int] | None = None) -> bool:
        reserved = self.reserved_on() if reserved is None else reserved
        route = self.lane_routes[lane]
        if not route:
            return self.kv_reserved_tokens + tokens <= self.kv_capacity_tokens
        return all(reserved.get(n, 0) + tokens <= self.node_capacity.get(n, self.kv_capacity_tokens) for n in route)

    def lane_members(self, lane: int) -> list[Request]:
        return [r for r in self.running if r.lane == lane]

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req: Request) -> None:
        """Queues a request, or refuses it at once (NeverFits, QueueFull)."""
        if req.reserved_tokens > self.kv_capacity_tokens:
            raise NeverFits(
                f"prompt ({req.num_prompt_tokens} tokens) + max_tokens ({req.max_tokens}) = {req.reserved_tokens} "
                f"KV tokens, more than a pipeline stage can hold ({self.kv_capacity_tokens}); lower max_tokens "
                f"or shorten the prompt"
            )
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(
                f"{len(self.waiting)} requests are already waiting for KV cache room (the bound is "
                f"coordinator.max_waiting = {self.max_waiting}); retry later"
            )
        self.waiting.append(req)

    def admit(self) -> list[Request]:
        """Moves waiting requests, oldest first, into the least loaded usable lane with KV room on its route."""
        admitted = []
        reserved = self.reserved_on()
        sizes = self._lane_sizes()
        while self.waiting and len(self.running) < self.max_running:
            req = self.waiting[0]
            placed = place(self, req, sizes, reserved)
            if placed is None:
                break
            lane, cached = placed
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            req.admitted_time = req.admitted_time or time.monotonic()
            req.lane = lane
            if cached:
                req.start_on_cache(cached)
            if self.prefix is not None:
                self.prefix.touch(self.lane_routes[lane], cached)
            sizes[lane] += 1
            for node in self.lane_routes[lane]:
                reserved[node] = reserved.get(node, 0) + req.new_kv_tokens
            self.running.append(req)
            admitted.append(req)
        return admitted

    def requeue_front(self, reqs: list[Request]) -> None:
        """Puts running requests back at the head of the queue, in their order (their route lost a node)."""
        for r in reqs:
            if r in self.running:
                self.running.remove(r)
        self.waiting.extendleft(reversed(reqs))

    def _lane_sizes(self) -> list[int]:
        sizes = [0] * self.depth
        for r in self.running:
            sizes[r.lane] += 1
        return sizes

    def _rebalance(self, lane: int) -> None:
        """Moves surplus idle sequences of ``lane`` to the lightest lane of the same route (their KV is there)."""
        sizes = self._lane_sizes()
        peers = [x for x in self.usable if self.lane_routes[x] == self.lane_routes[lane]]
        for r in self.running:
            lightest = min(peers, key=lambda x: (sizes[x], x), default=lane)
            if sizes[lane] - sizes[lightest] <= 1:
                return
            if r.lane == lane and not r.in_flight:
                r.lane = lightest
                sizes[lane] -= 1
                sizes[lightest] += 1

    def plan(self, lane: int) -> MicroBatchPlan | None:
        """The next micro-batch of an idle lane: decode rows first, then prefill chunks in the budget left."""
        self._rebalance(lane)
        entries: list[BatchEntry] = []
        budget = self.max_batch_tokens
        members = [r for r in self.running if r.lane == lane and not r.in_flight and not r.cancelled]
        decoding = [r for r in members if r.prefill_done][:min(self.max_batch_seqs, budget)]
        spare = budget - len(decoding)  # for draft tokens (speculative decoding), after one row for each
        for req in decoding:
            drafts = drafts_for(req, spare)
            spare -= len(drafts)
            entries.append(BatchEntry(req, req.num_computed, (*req.next_input_ids(), *drafts), True, drafts=drafts))
            budget -= 1 + len(drafts)
        elsewhere = self._prefilling_elsewhere(lane) if self.pipelined_prefill else []
        for req in [*members, *elsewhere]:
            if len(entries) >= self.max_batch_seqs or budget < 1:
                break
            if req.prefill_pending:
                ids = req.next_input_ids(budget)
                reaches_end = req.num_sent + len(ids) == req.num_context_tokens
                entries.append(BatchEntry(req, req.num_sent, tuple(ids), reaches_end))
                budget -= len(ids)
        if not entries:
            return None
        for e in entries:
            e.request.batches_in_flight += 1
            e.request.num_scheduled = e.start_pos + len(e.token_ids)
        return MicroBatchPlan(lane, tuple(entries))

    def decodes_alone(self, plan: MicroBatchPlan) -> bool:
        """``plan`` is all the work there is: one-token decode rows of every running sequence, none waiting."""
        planned = {e.request for e in plan.entries}
        return (not self.waiting and all(e.wants_token and len(e.token_ids) == 1 for e in plan.entries)
                and all(r in planned for r in self.running if not r.cancelled))

    def successor(self, plan: MicroBatchPlan) -> MicroBatchPlan | None:
        """Ring decode: the decode step after ``plan`` (in flight), for its sequences that go on past it (not
        cancelled, not at ``max_tokens`` with its token); their input tokens are not known yet (-1 here): the last
        stage hands them to the first. None when no sequence goes on."""
        entries = []
        for e in plan.entries:
            req = e.request
            ahead = len(req.output_ids) + req.batches_in_flight  # tokens it has once what is in flight is back
            if (req.cancelled or req.is_finished or e.seq_id != req.seq_id or not e.wants_token
                    or e.start_pos + len(e.token_ids) != req.num_sent or ahead >= req.max_tokens):
                continue
            entries.append(BatchEntry(req, req.num_sent, (-1,), True))
        for e in entries:
            e.request.batches_in_flight += 1
            e.request.num_scheduled = e.start_pos + 1
        return MicroBatchPlan(plan.lane, tuple(entries)) if entries else None

    def unschedule(self, plan: MicroBatchPlan) -> None:
        """A ring step that was given up: its positions are to be sent again (by the coordinator)."""
        for e in plan.entries:
            if e.seq_id == e.request.seq_id:
                e.request.num_scheduled = min(e.request.num_scheduled, e.start_pos)

    def _prefilling_elsewhere(self, lane: int) -> list[Request]:
        """Prompts with a chunk in flight whose next chunk this lane may carry: their lane's route is this one."""
        route = self.lane_routes[lane]
        return [r for r in self.running if r.in_flight and r.prefill_pending and not r.cancelled
                and r.lane in self.usable and self.lane_routes[r.lane] == route]

    def postprocess(self, plan: MicroBatchPlan, next_token_ids: list[int], stage_seconds: list[float],
                    failed: dict[int, str], accepted: list[int] | None = None,
                    logprobs: list[TokenLogprobs | None] | None = None,
                    scored: list[TokenLogprobs | None] | None = None) -> StepOutcome:
        """The bookkeeping of a micro-batch that came back, no I/O: positions now in the KV cache, time per stage,
        each wanted token (after the ``accepted`` drafts, per entry) appended to its request's output, and finish
        detection. Requests that finished or failed (``failed``: entry index -> why) leave the scheduler; cancelled
        ones are drained at the next tick. ``logprobs`` (per entry) go with the tokens kept; ``scored`` (per entry,
        of its prompt tokens) go with the request's first tokens once every chunk's are in."""
        out = StepOutcome()
        accepted = accepted or [0] * len(plan.entries)
        logprobs = logprobs or [None] * len(plan.entries)
        scored = scored or [None] * len(plan.entries)
        for i, (entry, token) in enumerate(zip(plan.entries, next_token_ids)):
            req = entry.request
            if req.is_finished or entry.seq_id != req.seq_id:
                continue  # it already failed (another of its chunks), or restarted on another route since
            if i in failed:
                self.remove(req)
                out.failed.append((req, failed[i]))
                continue
            if len(req.stage_seconds) != len(stage_seconds):
                req.stage_seconds = [0.0] * len(stage_seconds)
            req.stage_seconds = [a + b for a, b in zip(req.stage_seconds, stage_seconds)]
            prompt_scores = scored[i]
            if prompt_scores is not None and req.prompt_scores is not None:
                req.prompt_scores[entry.start_pos] = prompt_scores
            if not entry.wants_token or req.cancelled or req.is_finished:
                req.num_computed += len(entry.token_ids)
                continue  # a prefill chunk (the next follows in this lane), or a request drained at the next tick
            tokens, reason = take_tokens(entry, token, accepted[i])
            if reason:
                self.remove(req)
            chosen = logprobs[i]
            out.tokens.append(NewTokens(req, tokens, reason, None if chosen is None else chosen.first(len(tokens)),
                                        req.take_prompt_scores()))
        return out

    def remove(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def drain_cancelled(self) -> list[Request]:
        """Takes out cancelled requests that are not inside an in-flight micro-batch."""
        gone = [r for r in (*self.waiting, *self.running) if r.cancelled and not r.in_flight]
        for r in gone:
            self.remove(r)
        return gone
