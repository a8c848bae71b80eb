"""GET /ready: the API is ready only when a one-token generation through every stage of every served
model succeeded recently. A live API in front of a dead pipeline is not ready.

Probe results are reused for ``api.ready_ttl_s`` seconds, and concurrent callers share one probe.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from api.backend import Backend
from api.errors import ApiError
from api.generation import Generation
from protos.data_structures import SamplingParams


@dataclass(frozen=True)
class ModelProbe:
    model: str
    ready: bool
    detail: str = ""
    probe_ms: float | None = None


@dataclass(frozen=True)
class ReadyReport:
    ready: bool
    models: tuple[ModelProbe, ...]
    checked_at: float  # time.monotonic()


class Readiness:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.ttl_s = backend.config.api.ready_ttl_s
        self.timeout_s = backend.config.api.ready_timeout_s
        self._last: ReadyReport | None = None
        self._lock = asyncio.Lock()

    async def report(self) -> ReadyReport:
        async with self._lock:  # one probe at a time; later callers reuse its result
            if self._last is None or time.monotonic() - self._last.checked_at > self.ttl_s:
                self._last = await self._check()
            return self._last

    async def _check(self) -> ReadyReport:
        try:
            models = await self.backend.models()
        except ApiError as e:
            return ReadyReport(False, (ModelProbe("*", False, e.message),), time.monotonic())
        # a model waiting for memory (pending) or being removed (draining) is not expected to serve
        models = {name: info for name, info in models.items() if info.state not in ("pending", "draining")}
        if not models:
            return ReadyReport(False, (ModelProbe("*", False, "the coordinator serves no model"),), time.monotonic())
        probes = await asyncio.gather(*(self._probe(name, info.eos_token_ids) for name, info in models.items()))
        return ReadyReport(all(p.ready for p in probes), tuple(probes), time.monotonic())

    async def _probe(self, model: str, eos_token_ids: list[int]) -> ModelProbe:
        started = time.perf_counter()
        try:
            await self.backend.model(model)  # names the stage that is not ready
            token = eos_token_ids[0] if eos_token_ids else 0
            gen = Generation(self.backend, model, [token], 1, SamplingParams(), [], f"ready-{uuid.uuid4().hex[:8]}",
                             ignore_eos=True)
            await asyncio.wait_for(self._run(gen), self.timeout_s)
        except ApiError as e:
            if e.status == 429:  # the queue is full: the pipeline is up and busy
                return ModelProbe(model, True, "busy: " + e.message)
            return ModelProbe(model, False, e.message)
        except TimeoutError:
            return ModelProbe(model, False, f"a one-token generation did not finish within {self.timeout_s:g} s "
                              "(api.ready_timeout_s)")
        return ModelProbe(model, True, "", round((time.perf_counter() - started) * 1000, 1))

    @staticmethod
    async def _run(gen: Generation) -> None:
        await gen.start()
        await gen.text()
