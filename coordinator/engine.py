"""The generation loop of one model: schedule -> pipeline step -> stream tokens -> release finished."""

from __future__ import annotations

import asyncio
import logging

from coordinator.model_meta import ModelMeta
from coordinator.pipeline import Pipeline
from coordinator.request import Request, RequestStatus, TokenEvent
from coordinator.scheduler import Scheduler
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"engine-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for r in [*self.scheduler.waiting, *self.scheduler.running]:
            r.finish("error", "coordinator shutting down")

    def submit(self, req: Request) -> None:
        """Queues a request; raises NeverFits when its KV need exceeds a stage's whole budget."""
        self.scheduler.add(req)
        self._wakeup.set()

    def cancel(self, req: Request) -> None:
        if not req.is_finished:
            req.cancelled = True
            self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one batch does
                logger.exception("engine %s: unexpected error in a step", self.name)
                await asyncio.sleep(0.1)

    async def _step(self) -> None:
        for req in self.scheduler.drain_cancelled():
            if req.num_computed > 0 or req.status == RequestStatus.RUNNING:
                self._to_release.append(req.seq_id)
            req.finish("cancelled")
            logger.info("request %s cancelled after %d tokens", req.request_id, len(req.output_ids))
        if self._to_release:
            ids, self._to_release = self._to_release, []
            await self.pipeline.release(ids)
        batch = self.scheduler.schedule()
        if not batch:
            self._wakeup.clear()
            if not self.scheduler.has_work and not self._to_release:
                await self._wakeup.wait()
            else:  # waiting for KV room that a release will free
                await asyncio.sleep(0.01)
            return
        sent = [len(r.next_input_ids()) for r in batch]
        try:
            result = await self.pipeline.step(batch)
        except StageError as e:
            logger.error("model %s: micro-batch of %d sequence(s) failed: %s", self.name, len(batch), e)
            for req in batch:
                self.scheduler.remove(req)
                self._to_release.append(req.seq_id)
                req.finish("error", str(e))
            return
        for req, n, token in zip(batch, sent, result.next_token_ids):
            req.num_computed += n
            if req.cancelled:
                continue  # drained at the next step
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
