"""The generation loop of one model: admit -> one micro-batch per idle lane -> stream tokens -> release.

Up to ``depth`` micro-batches are in flight at once, so while the last stage works on one, the
first stage already works on the next. Each micro-batch runs as its own task; when it comes back,
its tokens are streamed, finished sequences leave, and its lane is free for its next micro-batch.
"""

from __future__ import annotations

import asyncio
import logging
import time

from coordinator.model_meta import ModelMeta
from coordinator.pipeline import Pipeline, StepResult
from coordinator.request import Request, TokenEvent
from coordinator.scheduler import MicroBatchPlan, Scheduler
from coordinator.stage_client import StageError

logger = logging.getLogger(__name__)


class ModelEngine:
    def __init__(self, name: str, meta: ModelMeta, pipeline: Pipeline, scheduler: Scheduler) -> None:
        self.name = name
        self.meta = meta
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.ready = False
        self.load_error = ""
        self._wakeup = asyncio.Event()
        self._to_release: list[str] = []
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # lane -> its micro-batch
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self.scheduler.depth

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"engine-{self.name}")

    async def stop(self) -> None:
        for task in [self._task, *self._in_flight.values()]:
            if task:
                task.cancel()
        for r in [*self.scheduler.waiting, *self.scheduler.running]:
            r.finish("error", "coordinator shutting down")

    def submit(self, req: Request) -> None:
        """Queues a request; raises NeverFits (can never fit) or QueueFull (too many waiting)."""
        self.scheduler.add(req)
        self._wakeup.set()

    def cancel(self, req: Request) -> None:
        if not req.is_finished:
            req.cancelled = True
            self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            try:
                self._wakeup.clear()
                await self._tick()
                await self._wakeup.wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one batch does
                logger.exception("engine %s: unexpected error", self.name)
                await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        for req in self.scheduler.drain_cancelled():
            if req.num_computed > 0:
                self._to_release.append(req.seq_id)
            req.finish("cancelled")
            logger.info("request %s cancelled after %d tokens", req.request_id, len(req.output_ids))
        for req in self.scheduler.admit():
            logger.debug("request %s admitted to lane %d after %.3f s in the queue", req.request_id, req.lane,
                         req.queue_seconds)
        for lane in range(self.depth):
            if lane in self._in_flight:
                continue
            plan = self.scheduler.plan(lane)
            if plan is None:
                continue
            release, self._to_release = self._to_release, []
            self._in_flight[lane] = asyncio.get_running_loop().create_task(
                self._run(plan, release), name=f"{self.name}-lane{lane}")
        if self._to_release and not self._in_flight:
            release, self._to_release = self._to_release, []
            await self.pipeline.release(release)

    async def _run(self, plan: MicroBatchPlan, release: list[str]) -> None:
        try:
            result = await self.pipeline.step(plan, release)
        except (StageError, RuntimeError) as e:
            self._fail(plan, release, e)
        else:
            self._deliver(plan, result)
        finally:
            for entry in plan.entries:
                entry.request.in_flight = False
            del self._in_flight[plan.lane]
            self._wakeup.set()

    def _fail(self, plan: MicroBatchPlan, release: list[str], error: Exception) -> None:
        why = self._describe(error)
        logger.error("model %s: micro-batch of %d sequence(s) failed: %s", self.name, len(plan.entries), why)
        self._to_release.extend(release)  # may not have reached every stage
        for entry in plan.entries:
            req = entry.request
            self.scheduler.remove(req)
            self._to_release.append(req.seq_id)
            req.finish("error", why)

    def _describe(self, error: Exception) -> str:
        """The failure with the node's address and layer range, so a user knows what is down."""
        if isinstance(error, StageError):
            for stage in self.pipeline.stages:
                if stage.client.node.id == error.node_id:
                    return (f"node {error.node_id} ({stage.client.node.address}, layers {stage.layers.start}-"
                            f"{stage.layers.end - 1} of {self.name}) failed: {error.code}: {error.message}")
        return str(error)

    def _deliver(self, plan: MicroBatchPlan, result: StepResult) -> None:
        for entry, token in zip(plan.entries, result.next_token_ids):
            req = entry.request
            req.num_computed += len(entry.token_ids)
            if len(req.stage_seconds) != len(result.stage_seconds):
                req.stage_seconds = [0.0] * len(result.stage_seconds)
            req.stage_seconds = [a + b for a, b in zip(req.stage_seconds, result.stage_seconds)]
            if not entry.wants_token:
                continue  # a prefill chunk; the next one follows in this lane's next micro-batch
            if req.cancelled:
                continue  # drained at the next tick
            if req.first_token_time is None:
                req.first_token_time = time.monotonic()
            req.output_ids.append(token)
            reason = self._finish_reason(req, token)
            if reason:
                self.scheduler.remove(req)
                self._to_release.append(req.seq_id)
                req.finish(reason, token_ids=(token,))
            else:
                req.events.put_nowait(TokenEvent((token,)))

    def _finish_reason(self, req: Request, token: int) -> str:
        if token in req.eos_token_ids:
            return "eos"
        if token in req.stop_token_ids:
            return "stop"
        if len(req.output_ids) >= req.max_tokens:
            return "length"
        return ""
