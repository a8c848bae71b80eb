"""The generation loop of one model: drain cancelled -> admit -> plan -> step -> postprocess -> publish.

Up to ``depth`` micro-batches are in flight at once (one per lane), so while the last stage works on one,
the first stage already works on the next. Each lane runs along a route (one replica of every layer range;
``ReplicaSet`` keeps the routes and the replicas' states). When a node of a route is lost, every sequence of
the lanes through it goes back to the front of the queue with a new sequence id and is replayed, prompt plus
the tokens generated so far, along a route of healthy replicas. Without a healthy replica for some range the
model is unavailable: its waiting requests end with an error naming the node and range.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from coordinator import metrics
from coordinator.draft_model import DraftEngine, DraftModelProposer
from coordinator.forwarding import RingStep, SentAhead
from coordinator.membership import NodeEvent
from coordinator.model_meta import ModelMeta
from coordinator.node_client import ModelLoad, StageError
from coordinator.pipeline import Pipeline, Route
from coordinator.publisher import FailoverStats, Publisher
from coordinator.replicas import ReplicaSet
from coordinator.request import Request
from coordinator.scheduler import MicroBatchPlan, Scheduler
from coordinator.speculation import DraftState, ModelDrafts, SpeculationConfig
from coordinator.step_result import StepResult
from protos.model_config import ModelConfig

logger = logging.getLogger(__name__)


class ModelEngine:
    def __init__(self, name: str, meta: ModelMeta, pipeline: Pipeline, scheduler: Scheduler,
                 model_load: ModelLoad | None = None) -> None:
        self.name = name
        self.meta = meta
        self.pipeline = pipeline
        self.scheduler = scheduler
        self._wakeup = asyncio.Event()
        self.replicas = ReplicaSet(pipeline, scheduler, model_load, self._wakeup.set)
        self.publisher = Publisher(name, scheduler)
        self.loaded = False  # the first load finished (some replicas may have failed; see mark_loaded)
        self.draining = False  # being removed: admits nothing new (see start_draining)
        self.prefill_mode = "auto"  # coordinator.pipelined_prefill; load_engine decides "auto" from the hosts
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # lane -> its micro-batch
        self._ahead: dict[int, SentAhead] = {}  # lane -> its next decode step, sent ahead (ring decode)
        self.ring_decode = True  # coordinator.ring_decode
        self.speculation = SpeculationConfig()  # the model's speculative decoding (coordinator/speculation.py)
        self.proposer: DraftModelProposer | None = None  # with a draft model (see use_draft_model)
        self._task: asyncio.Task[None] | None = None
        self.generation = 1  # which layout of the model this is (coordinator/generations.py)
        self.config: ModelConfig | None = None  # the model as placed (build_engine)
        self.frozen = False  # handing over to a new layout: admits and sends nothing new (coordinator/handover.py)
        self.successor: ModelEngine | None = None  # the layout that took its requests over
        metrics.init_model(name, [r.node_id for r in pipeline.replicas])
        self.replicas.set_depth(scheduler.depth)

    # ----- state ------------------------------------------------------------------------------------------

    @property
    def stats(self) -> FailoverStats:
        return self.publisher.stats

    @property
    def depth(self) -> int:
        return self.scheduler.depth

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def steps_under_way(self) -> list[asyncio.Task[None]]:
        """Micro-batches (and drafts) in flight, and decode steps sent ahead of them."""
        return [*self._in_flight.values(), *(link.task for link in self._ahead.values() if link.task)]

    @property
    def ready(self) -> bool:
        """Loaded, and every layer range has a replica that can take work (or a spare takes a range over)."""
        return self.loaded and (self.replicas.ready or self.replicas.awaiting_replacement)

    def unavailable_reason(self) -> str:
        return self.replicas.unavailable_reason() if self.loaded else "it is still loading"

    @property
    def routes(self) -> list[Route]:
        return self.replicas.routes

    def wake(self) -> None:
        """Runs the loop once more (another engine queued releases on our replicas)."""
        self._wakeup.set()

    def use_draft_model(self, served: Mapping[str, DraftEngine]) -> None:
        """With speculative "draft": ``served`` (every served model by name) holds the draft model, now or later."""
        if self.speculation.method == "draft":
            self.proposer = DraftModelProposer(self.speculation.draft_model, served)

    def mark_loaded(self) -> None:
        """The first load finished: node events may now reload replicas, and requests run."""
        self.loaded = True
        self._wakeup.set()

    def start_draining(self) -> None:
        """The model is being removed: new requests are refused, nothing is reloaded."""
        self.draining = True

    def on_node_event(self, event: NodeEvent) -> None:
        self.replicas.on_node_event(event, reload=self.loaded and not self.draining)

    # ----- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"engine-{self.name}")

    async def stop(self, why: str = "coordinator shutting down") -> None:
        for task in [self._task, *self.steps_under_way()]:
            if task:
                task.cancel()
        for r in [*self.scheduler.waiting, *self.scheduler.running]:
            r.finish("error", why)

    def submit(self, req: Request) -> None:
        """Queues a request; raises NeverFits (can never fit) or QueueFull (too many waiting)."""
        if self.successor is not None:  # re-placed since the caller looked it up
            return self.successor.submit(req)
        if self.speculation.enabled and req.speculative and req.drafting is None:
            model = ModelDrafts(f"{req.seq_id}-draft") if self.proposer is not None else None
            req.drafting = DraftState(self.speculation.max_draft_tokens, model)
        self.scheduler.add(req)
        self._wakeup.set()

    def cancel(self, req: Request) -> None:
        """Stops a request; one still waiting leaves the queue at once (it stops counting against max_waiting)."""
        if self.successor is not None:
            return self.successor.cancel(req)
        if req.is_finished:
            return
        req.cancelled = True
        if req in self.scheduler.waiting and not req.in_flight:
            self.scheduler.remove(req)
            req.finish("cancelled")
        self._wakeup.set()

    # ----- the loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                self._wakeup.clear()
                await self.tick()
                await self._wakeup.wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one batch does
                logger.exception("engine %s: unexpected error", self.name)
                await asyncio.sleep(0.1)

    async def tick(self) -> None:
        """One turn of the loop: everything that can be done now without waiting on a node."""
        self._drain_cancelled()
        self._recover_lanes()
        self._admit()
        if self.proposer is not None:
            self.proposer.sweep()
        self._issue()
        routes = self.replicas.routes
        await self.pipeline.flush_releases({r for lane in self._in_flight for r in routes[lane]})

    def _drain_cancelled(self) -> None:
        for req in self.scheduler.drain_cancelled():
            self.publisher.cancelled(req, self.replicas.routes[req.lane] if req.lane >= 0 else None)

    def _recover_lanes(self) -> None:
        """Lanes that lost a node replay their sequences; idle lanes take routes over the ready replicas."""
        busy = set(self._in_flight)  # and the home lanes of sequences with a prefill chunk out on another lane:
        busy |= {r.lane for r in self.scheduler.running if r.in_flight}  # replayed once every chunk is back
        for lane in self.replicas.take_lost_lanes(busy):
            self.publisher.replay(lane, self.replicas.routes[lane])
        self.replicas.reroute_idle_lanes(busy)
        if self.loaded and not self.ready and self.scheduler.waiting:
            self.publisher.fail_waiting(f"model {self.name} is unavailable: {self.unavailable_reason()}")

    def _admit(self) -> None:
        if self.frozen:
            return
        for req in self.scheduler.admit():
            req.route_nodes = self.scheduler.lane_routes[req.lane]
            self.publisher.admitted(req)
        self.replicas.send_evictions()  # cached blocks evicted to make room: the nodes drop them first

    def _issue(self) -> None:
        """One micro-batch for every idle lane whose route can take it (step -> postprocess -> publish in _run),
        and with ring decode the decode step after it, sent ahead."""
        if self.frozen:
            return
        for lane, route in enumerate(self.replicas.routes):
            if lane in self._in_flight or not all(r.state in ("ready", "draining") for r in route):
                continue  # a draining node finishes the sequences it holds but takes no new ones
            if self._draft_first(lane):
                continue
            plan = self.scheduler.plan(lane)
            if plan is None:
                continue
            ahead = self._ring_ahead(lane, plan)
            ahead_id = self.pipeline.reserve_batch_id() if ahead else None
            task = asyncio.get_running_loop().create_task(
                self._run(route, plan, RingStep(tokens_to_batch=ahead_id) if ahead else None),
                name=f"{self.name}-lane{lane}")
            self._in_flight[lane] = task
            if ahead is not None and ahead_id is not None:
                self._send_ahead(lane, route, ahead, ahead_id, task)

    def _draft_first(self, lane: int) -> bool:
        """With a draft model: its sequences that will decode next get their drafts first (the lane waits)."""
        if self.proposer is None:
            return False
        members = self.proposer.wanting(self.scheduler.lane_members(lane))
        if not members:
            return False
        self._in_flight[lane] = asyncio.get_running_loop().create_task(self._draft(lane, members),
                                                                        name=f"{self.name}-lane{lane}-draft")
        return True

    async def _draft(self, lane: int, members: list[Request]) -> None:
        assert self.proposer is not None
        try:
            await self.proposer.propose_held(members)
        finally:
            if self._in_flight.get(lane) is asyncio.current_task():
                del self._in_flight[lane]
            self._wakeup.set()

    def _ring_ahead(self, lane: int, plan: MicroBatchPlan) -> MicroBatchPlan | None:
        """Ring decode: the step after ``plan``, when ``plan`` is all the work there is (one busy lane, decode rows
        only, nobody waiting) and the model forwards stage to stage (see coordinator/forwarding.py RingStep)."""
        if self.frozen or not self.ring_decode or self.pipeline.forwarding != "direct" or len(self.pipeline.groups) < 2:
            return None
        if set(self._in_flight) - {lane} or not self.scheduler.decodes_alone(plan):
            return None
        if any(e.request.next_step_needs_coordinator for e in plan.entries):
            return None
        return self.scheduler.successor(plan)

    def _send_ahead(self, lane: int, route: Route, plan: MicroBatchPlan, batch_id: int,
                    after: asyncio.Task[None]) -> None:
        link = SentAhead(plan, batch_id, self.pipeline.reserve_batch_id(), after)
        link.task = asyncio.get_running_loop().create_task(
            self._run(route, plan, RingStep(batch_id, link.next_batch_id), link), name=f"{self.name}-lane{lane}+")
        self._ahead[lane] = link

    async def _run(self, route: Route, plan: MicroBatchPlan, ring: RingStep | None = None,
                   link: SentAhead | None = None) -> None:
        outcome: StepResult | Exception | None = None
        try:
            try:
                outcome = await self.pipeline.step(route, plan, ring)
            except (StageError, RuntimeError) as e:
                outcome = e
            if link is not None:
                await asyncio.wait([link.after])  # a step sent ahead is published after the one before it
            self._publish(route, plan, outcome, link)
        finally:
            for entry in plan.entries:
                entry.request.batches_in_flight -= 1
            self._step_done(plan.lane, route, isinstance(outcome, StepResult) and not outcome.ring_broken)
            self._wakeup.set()

    def _publish(self, route: Route, plan: MicroBatchPlan, outcome: StepResult | Exception | None,
                 link: SentAhead | None) -> None:
        if link is not None and (link.discard or not isinstance(outcome, StepResult)):
            self.scheduler.unschedule(plan)  # a step sent ahead of one that failed: the one before decides
        elif isinstance(outcome, StepResult):
            self.publisher.deliver(plan, route, outcome)
        elif isinstance(outcome, StageError):
            if not outcome.stream_lost:  # a refused batch: the node is fine, these sequences are not
                self.publisher.fail(plan, route, self.pipeline.describe_error(outcome))
            # else: the replica set marked the lane lost; its sequences are replayed at the next tick
        elif isinstance(outcome, RuntimeError):
            self.publisher.fail(plan, route, str(outcome))

    def _step_done(self, lane: int, route: Route, ok: bool) -> None:
        """The lane's step ended: the step sent ahead of it (ring decode) becomes the lane's, and the next is sent
        ahead of that one while the lane still decodes alone; after a failure the steps ahead are given up."""
        if self._in_flight.get(lane) is asyncio.current_task():
            del self._in_flight[lane]
        link = self._ahead.pop(lane, None)
        if link is None or link.task is None:
            return
        self._in_flight[lane] = link.task
        if not ok:
            link.discard = True
            self.pipeline.abandon(route, link.batch_id)
        nxt = self._ring_ahead(lane, link.plan) if ok else None
        if nxt is not None:
            self._send_ahead(lane, route, nxt, link.next_batch_id, link.task)
        else:
            self.pipeline.abandon(route[:1], link.next_batch_id)  # tokens no step will take
